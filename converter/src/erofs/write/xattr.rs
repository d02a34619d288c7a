//! Inline xattrs: the body that follows an inode (header, then entries padded to 4 bytes).
//!
//! v1 writes no shared xattrs: every inode carries its own, which keeps the layout local to
//! the inode at the cost of repeating common values (SELinux labels, capabilities).

use std::collections::BTreeMap;

use zerocopy::little_endian::U16;
use zerocopy::IntoBytes;

use crate::erofs::format::{XattrEntry, XattrIbodyHeader};
use crate::error::{Error, Result};

/// Name prefixes the kernel has handlers for, by `e_name_index`. `lustre.` (5) is left out:
/// mainline kernels cannot read it back.
const PREFIXES: [(u8, &str); 5] = [
    (2, "system.posix_acl_access"),
    (3, "system.posix_acl_default"),
    (1, "user."),
    (4, "trusted."),
    (6, "security."),
];

/// The encoded inline xattr area of one inode, and its `i_xattr_icount`.
#[derive(Debug, Default)]
pub(super) struct XattrBody {
    pub bytes: Vec<u8>,
    pub icount: u16,
}

/// Encodes `xattrs` (already in name order, so the output is deterministic). Empty when there
/// are none: a header without entries is something fsck rejects.
pub(super) fn encode(entry: &str, xattrs: &BTreeMap<String, Vec<u8>>) -> Result<XattrBody> {
    if xattrs.is_empty() {
        return Ok(XattrBody::default());
    }
    let mut bytes = XattrIbodyHeader {
        h_name_filter: 0.into(),
        h_shared_count: 0,
        h_reserved2: [0; 7],
    }
    .as_bytes()
    .to_vec();
    for (name, value) in xattrs {
        let (index, suffix) = split_name(name).ok_or_else(|| {
            Error::Unsupported(format!(
                "entry `{entry}`: xattr `{name}` has no namespace EROFS can store \
                 (user., trusted., security., system.posix_acl_*)"
            ))
        })?;
        let name_len = u8::try_from(suffix.len()).map_err(|_| {
            Error::Unsupported(format!("entry `{entry}`: xattr name `{name}` is too long"))
        })?;
        let value_size = u16::try_from(value.len()).map_err(|_| {
            Error::Unsupported(format!(
                "entry `{entry}`: xattr `{name}` value of {} bytes exceeds 65535",
                value.len()
            ))
        })?;
        let head = XattrEntry {
            e_name_len: name_len,
            e_name_index: index,
            e_value_size: U16::new(value_size),
        };
        bytes.extend_from_slice(head.as_bytes());
        bytes.extend_from_slice(suffix.as_bytes());
        bytes.extend_from_slice(value);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
    }
    // The header counts as one slot, each further 4 bytes as another.
    let icount = u16::try_from((bytes.len() - 12) / 4 + 1)
        .map_err(|_| Error::Unsupported(format!("entry `{entry}`: inline xattrs too large")))?;
    Ok(XattrBody { bytes, icount })
}

/// `(e_name_index, suffix)` of a full xattr name, or `None` for a namespace EROFS lacks.
fn split_name(name: &str) -> Option<(u8, &str)> {
    PREFIXES.iter().find_map(|&(index, prefix)| {
        let suffix = name.strip_prefix(prefix)?;
        // The ACL indexes name one attribute each; the others need a non-empty suffix.
        let whole = index == 2 || index == 3;
        (whole == suffix.is_empty()).then_some((index, suffix))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::erofs::format::xattr_ibody_size;

    #[test]
    fn namespaces_map_to_indexes() {
        assert_eq!(split_name("user.a"), Some((1, "a")));
        assert_eq!(split_name("system.posix_acl_access"), Some((2, "")));
        assert_eq!(split_name("system.posix_acl_default"), Some((3, "")));
        assert_eq!(
            split_name("trusted.overlay.opaque"),
            Some((4, "overlay.opaque"))
        );
        assert_eq!(split_name("security.capability"), Some((6, "capability")));
        assert_eq!(split_name("system.posix_acl_accessx"), None);
        assert_eq!(split_name("user."), None);
        assert_eq!(split_name("lustre.x"), None);
        assert_eq!(split_name("other.x"), None);
    }

    #[test]
    fn body_size_matches_icount() {
        let xattrs = BTreeMap::from([
            ("user.a".to_string(), b"xyz".to_vec()),
            (
                "security.selinux".to_string(),
                b"system_u:object_r:bin_t:s0\0".to_vec(),
            ),
            ("user.empty".to_string(), Vec::new()),
        ]);
        let body = encode("f", &xattrs).unwrap();
        assert_eq!(body.bytes.len() as u64, xattr_ibody_size(body.icount));
        assert!(encode("f", &BTreeMap::new()).unwrap().bytes.is_empty());
        let err = encode("a/b", &BTreeMap::from([("foo.bar".into(), vec![])])).unwrap_err();
        assert!(err.to_string().contains("entry `a/b`"), "{err}");
    }
}
