//! Tarballs read in place: one pass records where each member's data lies, then members are
//! served as windows of the file, so multi-gigabyte layers are never copied or held in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::blob::{BlobRead, FileBlob};
use crate::error::{Error, Result};
use crate::layer::{detect_compression, Compression};

use super::layout::{display_name, LayoutFiles, LayoutSource};

/// A symlink or hardlink chain longer than this is treated as a loop.
const MAX_LINK_HOPS: usize = 16;

#[derive(Clone, Debug)]
enum Member {
    File {
        offset: u64,
        size: u64,
    },
    /// Target as an archive path, already resolved relative to the link's directory.
    Link(String),
}

/// The members of a tar file, by normalised path.
pub(crate) struct TarIndex {
    file: File,
    members: HashMap<String, Member>,
    name: String,
}

impl TarIndex {
    /// Index the tar at `path`. A gzip- or zstd-compressed tar is first decompressed into an
    /// anonymous temporary file (in `$TMPDIR`), since compressed streams cannot be read at offsets.
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let mut file = File::open(path).map_err(|e| Error::io(format!("open {name}"), e))?;
        let mut head = [0u8; 4];
        let n =
            read_head(&mut file, &mut head).map_err(|e| Error::io(format!("read {name}"), e))?;
        let compression = detect_compression(&head[..n]);
        if compression != Compression::None {
            file = decompress_to_temp(file, compression, &name)?;
        }
        let members = index_members(&file).map_err(|e| e.context(&name))?;
        Ok(TarIndex {
            file,
            members,
            name,
        })
    }

    /// The member at `path` as a range-readable blob, following links; `None` if absent.
    pub fn member(&self, path: &str) -> Result<Option<FileBlob>> {
        let mut path = normalise(path);
        for _ in 0..MAX_LINK_HOPS {
            match self.members.get(&path) {
                None => return Ok(None),
                Some(Member::Link(target)) => path = target.clone(),
                Some(Member::File { offset, size }) => {
                    let file = self
                        .file
                        .try_clone()
                        .map_err(|e| Error::io(format!("dup {}", self.name), e))?;
                    let name = format!("{}: {path}", self.name);
                    return Ok(Some(FileBlob::window(file, *offset, *size, name)));
                }
            }
        }
        Err(Error::format(format!(
            "{}: `{path}`: too many levels of links",
            self.name
        )))
    }

    /// Every member path, links included, for messages and probing.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }
}

impl LayoutFiles for TarIndex {
    fn open(&self, path: &str, _size: Option<u64>) -> Result<Option<Box<dyn BlobRead>>> {
        Ok(self.member(path)?.map(|b| Box::new(b) as Box<dyn BlobRead>))
    }
}

/// Open `oci-archive:FILE[:TAG]`.
pub(crate) fn open_oci_archive(file: &Path, tag: Option<String>) -> Result<LayoutSource> {
    let name = display_name("oci-archive", file, tag.as_deref());
    let index = TarIndex::open(file).map_err(|e| e.context(&name))?;
    LayoutSource::new(Box::new(index), name, tag)
}

fn read_head(file: &mut File, head: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(n)
}

fn decompress_to_temp(file: File, compression: Compression, name: &str) -> Result<File> {
    let mut out = tempfile::tempfile().map_err(|e| {
        Error::io(
            format!("{name}: create a temporary file to decompress into"),
            e,
        )
    })?;
    let input = BufReader::new(file);
    let copied = match compression {
        Compression::Gzip => std::io::copy(&mut flate2::read::MultiGzDecoder::new(input), &mut out),
        Compression::Zstd => zstd::stream::read::Decoder::with_buffer(input)
            .and_then(|mut d| std::io::copy(&mut d, &mut out)),
        Compression::None => unreachable!("only compressed archives are decompressed"),
    };
    copied.map_err(|e| Error::io(format!("{name}: decompress"), e))?;
    // Indexing reads through the file's cursor, which the copy left at the end.
    out.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(format!("{name}: seek the decompressed copy"), e))?;
    Ok(out)
}

fn index_members(file: &File) -> Result<HashMap<String, Member>> {
    let err = |e: std::io::Error| Error::io("read tar", e);
    let mut archive = tar::Archive::new(file);
    let mut members = HashMap::new();
    for entry in archive.entries_with_seek().map_err(err)? {
        let entry = entry.map_err(err)?;
        let path = entry.path().map_err(err)?;
        let path = normalise(&path.to_string_lossy());
        let kind = entry.header().entry_type();
        let member = if kind.is_file() || kind == tar::EntryType::Continuous {
            Member::File {
                offset: entry.raw_file_position(),
                size: entry.size(),
            }
        } else if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(err)?
                .ok_or_else(|| Error::format(format!("`{path}`: link without a target")))?;
            let target = target.to_string_lossy();
            // Symlinks resolve from the link's directory, hardlinks from the archive root.
            let joined = if kind.is_symlink() && !target.starts_with('/') {
                match path.rfind('/') {
                    Some(i) => format!("{}/{target}", &path[..i]),
                    None => target.to_string(),
                }
            } else {
                target.to_string()
            };
            Member::Link(normalise(&joined))
        } else {
            continue;
        };
        members.insert(path, member);
    }
    Ok(members)
}

/// `./a//b/../c/` → `a/c`: tar writers differ in how they spell the same path.
pub(crate) fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalise("./blobs//sha256/ab/"), "blobs/sha256/ab");
        assert_eq!(normalise("/a/b/../c"), "a/c");
        assert_eq!(normalise("../../x"), "x");
    }
}
