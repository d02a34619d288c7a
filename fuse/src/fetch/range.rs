//! Byte ranges: clamping to the blob, coalescing into requests, and the Content-Range header.

/// A half-open byte range `[start, end)` of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: u64,
    pub end: u64,
}

impl Span {
    /// `(offset, len)` clamped to a blob of `size` bytes: never past the end, maybe empty.
    pub fn clamped(off: u64, len: u64, size: u64) -> Span {
        let start = off.min(size);
        Span {
            start,
            end: off.saturating_add(len).min(size),
        }
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// The inclusive `(first, last)` an HTTP `Range` header names; `None` when empty.
    pub fn inclusive(&self) -> Option<(u64, u64)> {
        (!self.is_empty()).then(|| (self.start, self.end - 1))
    }
}

/// One request of a coalesced read and the caller's ranges it serves.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Group {
    pub span: Span,
    /// Indices into the caller's range list.
    pub members: Vec<usize>,
}

/// Groups non-empty spans whose gaps are at most `gap` bytes (overlaps included) into requests.
pub(crate) fn coalesce(spans: &[Span], gap: u64) -> Vec<Group> {
    let mut order: Vec<usize> = (0..spans.len()).filter(|&i| !spans[i].is_empty()).collect();
    order.sort_by_key(|&i| (spans[i].start, spans[i].end));
    let mut groups: Vec<Group> = Vec::new();
    for i in order {
        let s = spans[i];
        match groups.last_mut() {
            Some(g) if s.start <= g.span.end.saturating_add(gap) => {
                g.span.end = g.span.end.max(s.end);
                g.members.push(i);
            }
            _ => groups.push(Group {
                span: s,
                members: vec![i],
            }),
        }
    }
    groups
}

/// A parsed `Content-Range` header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ContentRange {
    /// `bytes first-last/total` (total `None` for `*`).
    Bytes {
        first: u64,
        last: u64,
        total: Option<u64>,
    },
    /// `bytes */total`, sent with 416.
    Unsatisfied { total: u64 },
}

impl ContentRange {
    pub fn parse(value: &str) -> Option<ContentRange> {
        let rest = value.trim().strip_prefix("bytes")?.trim_start();
        let (range, total) = rest.split_once('/')?;
        let total = total.trim();
        if range.trim() == "*" {
            return Some(ContentRange::Unsatisfied {
                total: total.parse().ok()?,
            });
        }
        let (first, last) = range.trim().split_once('-')?;
        let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
        let total = match total {
            "*" => None,
            t => Some(t.parse().ok()?),
        };
        (first <= last).then_some(ContentRange::Bytes { first, last, total })
    }

    /// The blob size this header tells, if any.
    pub fn total(&self) -> Option<u64> {
        match *self {
            ContentRange::Bytes { total, .. } => total,
            ContentRange::Unsatisfied { total } => Some(total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: u64, end: u64) -> Span {
        Span { start, end }
    }

    #[test]
    fn clamps_to_the_blob() {
        assert_eq!(Span::clamped(90, 20, 100), span(90, 100));
        assert!(Span::clamped(100, 5, 100).is_empty());
        assert!(Span::clamped(u64::MAX, u64::MAX, 100).is_empty());
        assert_eq!(Span::clamped(0, u64::MAX, 100).inclusive(), Some((0, 99)));
        assert_eq!(span(5, 5).inclusive(), None);
    }

    #[test]
    fn coalesces_near_and_overlapping_spans() {
        let spans = [
            span(200, 300),
            span(0, 100),
            span(100, 150),
            span(1000, 1010),
            span(7, 7),
            span(250, 260),
        ];
        let groups = coalesce(&spans, 50);
        assert_eq!(
            groups,
            vec![
                Group {
                    span: span(0, 300),
                    members: vec![1, 2, 0, 5]
                },
                Group {
                    span: span(1000, 1010),
                    members: vec![3]
                },
            ]
        );
        assert_eq!(coalesce(&spans, 0).len(), 3);
    }

    #[test]
    fn parses_content_range() {
        assert_eq!(
            ContentRange::parse("bytes 100-199/1000"),
            Some(ContentRange::Bytes {
                first: 100,
                last: 199,
                total: Some(1000)
            })
        );
        assert_eq!(
            ContentRange::parse("bytes 0-0/*"),
            Some(ContentRange::Bytes {
                first: 0,
                last: 0,
                total: None
            })
        );
        assert_eq!(
            ContentRange::parse("bytes */42"),
            Some(ContentRange::Unsatisfied { total: 42 })
        );
        assert_eq!(ContentRange::parse("bytes 9-3/10"), None);
        assert_eq!(ContentRange::parse("items 0-1/2"), None);
        assert_eq!(ContentRange::parse("bytes x-1/2"), None);
    }
}
