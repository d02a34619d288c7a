//! Extended attributes: the inline area after the inode (a header, shared-xattr ids, then
//! entries) and shared entries at `xattr_blkaddr * B + id * 4`.

use zerocopy::FromBytes;

use super::inode::Inode;
use super::ErofsReader;
use crate::blob::BlobRead;
use crate::erofs::format::{self, XattrEntry, XattrIbodyHeader};
use crate::error::{Error, Result, ResultExt};

const HEADER_SIZE: usize = size_of::<XattrIbodyHeader>();
const ENTRY_SIZE: usize = size_of::<XattrEntry>();
/// `e_name_index` bit of long (table-defined) prefixes.
const LONG_PREFIX: u8 = 0x80;

impl<B: BlobRead> ErofsReader<B> {
    /// [`ErofsReader::xattrs`] without the nid prefix on errors.
    pub(super) fn read_xattrs(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if inode.xattr_size == 0 {
            return Ok(Vec::new());
        }
        // Inside the inode's block (checked by `read_inode`), so at most a block.
        let area = self
            .blob
            .read_vec(inode.iloc + inode.isize, inode.xattr_size)?;
        let (header, _) = XattrIbodyHeader::read_from_prefix(&area)
            .map_err(|_| Error::format("inline xattr area shorter than its header"))?;
        let shared = usize::from(header.h_shared_count);
        let ids_end = HEADER_SIZE + 4 * shared;
        if ids_end > area.len() {
            return Err(Error::format(format!(
                "{shared} shared xattr ids do not fit the inline xattr area of {} bytes",
                area.len()
            )));
        }
        let mut out = Vec::new();
        let mut pos = ids_end;
        while pos < area.len() {
            let (name, value, len) = inline_entry(&area[pos..])
                .with_context(|| format!("inline xattr at byte {pos}"))?;
            out.push((name, value));
            pos += len;
        }
        let shared_base = u64::from(self.sb.xattr_blkaddr.get()) << self.blkbits;
        for id_bytes in area[HEADER_SIZE..ids_end].chunks_exact(4) {
            let id = u32::from_le_bytes(id_bytes.try_into().expect("4-byte chunk"));
            let entry = self
                .shared_entry(shared_base + u64::from(id) * 4)
                .with_context(|| format!("shared xattr {id}"))?;
            out.push(entry);
        }
        Ok(out)
    }

    fn shared_entry(&self, at: u64) -> Result<(Vec<u8>, Vec<u8>)> {
        let mut raw = [0u8; ENTRY_SIZE];
        self.blob.read_at(at, &mut raw)?;
        let e = XattrEntry::read_from_bytes(&raw).expect("4-byte buffer");
        let name_len = usize::from(e.e_name_len);
        let body = self.blob.read_vec(
            at + ENTRY_SIZE as u64,
            (name_len + usize::from(e.e_value_size.get())) as u64,
        )?;
        let name = full_name(e.e_name_index, &body[..name_len])?;
        Ok((name, body[name_len..].to_vec()))
    }
}

/// The entry at the start of `buf`: full name, value, and its size padded to 4.
fn inline_entry(buf: &[u8]) -> Result<(Vec<u8>, Vec<u8>, usize)> {
    let (e, rest) = XattrEntry::read_from_prefix(buf)
        .map_err(|_| Error::format(format!("{} bytes cannot hold an entry", buf.len())))?;
    let name_len = usize::from(e.e_name_len);
    let value_len = usize::from(e.e_value_size.get());
    let len = (ENTRY_SIZE + name_len + value_len).next_multiple_of(4);
    if len > buf.len() {
        return Err(Error::format(format!(
            "entry of {len} bytes (name {name_len}, value {value_len}) overruns the inline area"
        )));
    }
    let name = full_name(e.e_name_index, &rest[..name_len])?;
    let value = rest[name_len..name_len + value_len].to_vec();
    Ok((name, value, len))
}

/// Prefix of `index` followed by `suffix`.
fn full_name(index: u8, suffix: &[u8]) -> Result<Vec<u8>> {
    if index & LONG_PREFIX != 0 {
        return Err(Error::Unsupported(format!(
            "long xattr name prefix {}",
            index & !LONG_PREFIX
        )));
    }
    let Some((_, prefix)) = format::XATTR_PREFIXES.iter().find(|(i, _)| *i == index) else {
        return Err(Error::format(format!("unknown xattr name index {index}")));
    };
    let mut name = Vec::with_capacity(prefix.len() + suffix.len());
    name.extend_from_slice(prefix.as_bytes());
    name.extend_from_slice(suffix);
    Ok(name)
}
