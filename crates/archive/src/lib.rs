//! Reading tar.gz archives that arrive from outside the cluster's own code: template and module
//! layers (checked by the API on upload, unpacked by daemons) and backup archives. Every reader
//! goes through [`walk`], which enforces the same rules everywhere (docs/security.md,
//! "Archives"):
//!
//! - at most [`Limits::max_entries`] entries and [`Limits::max_unpacked_bytes`] of content,
//!   counted from the headers before any content is read, so a small archive that would unpack
//!   to terabytes ("zip bomb") is refused after reading its first headers;
//! - tar metadata (long names, PAX headers) between two entries is capped at [`METADATA_LIMIT`],
//!   so no header can make the reader hold more than that in memory;
//! - only files, directories, symbolic and hard links; a path or link target that would leave
//!   the directory the archive is unpacked in is refused.
//!
//! Nothing here holds a whole archive: content streams from the reader to the visitor.

use std::cell::Cell;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use tar::EntryType;

/// The default cap on entries in one archive.
pub const MAX_ENTRIES: u64 = 100_000;

/// Tar metadata (headers, long names, PAX extensions) allowed between two entries.
pub const METADATA_LIMIT: u64 = 1024 * 1024;

/// How much an archive may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_entries: u64,
    pub max_unpacked_bytes: u64,
}

/// What an archive held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Files, directories and links.
    pub entries: u64,
    /// Bytes of file content.
    pub unpacked_bytes: u64,
}

/// Why an archive was refused. Every message names the entry it is about, when there is one.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive is empty or not gzip-compressed (expected a .tar.gz)")]
    NotGzip,
    #[error("the archive is empty")]
    Empty,
    #[error("the archive is truncated or corrupt{}: {source}", at.as_ref().map(|e| format!(" at {e}")).unwrap_or_default())]
    Corrupt {
        at: Option<String>,
        source: io::Error,
    },
    #[error(
        "the archive holds more than {} of tar metadata between two entries",
        mib(METADATA_LIMIT)
    )]
    MetadataTooLarge,
    #[error("an entry has an unreadable name: {0}")]
    BadName(io::Error),
    #[error("{entry} points outside the directory it is unpacked in")]
    Outside { entry: String },
    #[error("{entry} links to {target}, outside the directory it is unpacked in")]
    LinkOutside { entry: String, target: String },
    #[error("{entry} has an unreadable link target: {source}")]
    BadLink { entry: String, source: io::Error },
    #[error("{entry} is a link without a target")]
    NoLinkTarget { entry: String },
    #[error("{entry} is a {kind}; an archive may hold only files, directories and links")]
    Special { entry: String, kind: &'static str },
    #[error("the archive has more than {limit} entries (the limit)")]
    TooManyEntries { limit: u64 },
    #[error("the archive unpacks to more than {} (the limit), at {entry}", mib(*limit))]
    TooLarge { limit: u64, entry: String },
    #[error("not unpacking {entry}: {reason}")]
    NoRoom { entry: String, reason: String },
    #[error("cannot unpack {entry}: {source}")]
    Unpack { entry: String, source: io::Error },
    #[error("cannot create {path}: {source}")]
    CreateDir { path: String, source: io::Error },
    /// A visitor of [`walk`] refused an entry.
    #[error("{entry}: {reason}")]
    Refused { entry: String, reason: String },
}

/// One entry as [`walk`] hands it to its visitor.
pub type Entry<'a, R> = tar::Entry<'a, Budgeted<GzDecoder<io::Chain<io::Cursor<[u8; 2]>, R>>>>;

/// Reads `reader` as a tar.gz within `limits`, calling `visit` with each entry's normalized
/// path (never absolute, never `..`) and the entry, whose content the visitor may read or
/// unpack. Refuses (with the reason, naming the entry) anything [the module](self) describes.
pub fn walk<R: Read>(
    reader: R,
    limits: &Limits,
    mut visit: impl FnMut(&Path, &mut Entry<'_, R>) -> Result<(), ArchiveError>,
) -> Result<Summary, ArchiveError> {
    let mut reader = reader;
    let mut magic = [0u8; 2];
    reader
        .read_exact(&mut magic)
        .map_err(|_| ArchiveError::NotGzip)?;
    if magic != [0x1f, 0x8b] {
        return Err(ArchiveError::NotGzip);
    }
    let allowance = Rc::new(Cell::new(METADATA_LIMIT));
    let budgeted = Budgeted {
        inner: GzDecoder::new(io::Cursor::new(magic).chain(reader)),
        read: 0,
        allowance: allowance.clone(),
    };
    let mut archive = tar::Archive::new(budgeted);
    let mut summary = Summary::default();
    let entries = archive.entries().map_err(unreadable)?;
    for entry in entries {
        let mut entry = entry.map_err(unreadable)?;
        let path = entry.path().map_err(ArchiveError::BadName)?.into_owned();
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            continue;
        }
        let named = path.display().to_string();
        let normal = inside(Path::new(""), &path).ok_or_else(|| ArchiveError::Outside {
            entry: named.clone(),
        })?;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
            EntryType::Symlink | EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|source| ArchiveError::BadLink {
                        entry: named.clone(),
                        source,
                    })?
                    .ok_or_else(|| ArchiveError::NoLinkTarget {
                        entry: named.clone(),
                    })?;
                // A symbolic link resolves from its own directory, a hard link from the root.
                let base = match kind {
                    EntryType::Symlink => normal.parent().unwrap_or(Path::new("")).to_path_buf(),
                    _ => PathBuf::new(),
                };
                if inside(&base, &target).is_none() {
                    return Err(ArchiveError::LinkOutside {
                        entry: named,
                        target: target.display().to_string(),
                    });
                }
            }
            other => {
                return Err(ArchiveError::Special {
                    entry: named,
                    kind: describe(other),
                });
            }
        }
        summary.entries += 1;
        if summary.entries > limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let size = entry.size();
        summary.unpacked_bytes = summary.unpacked_bytes.saturating_add(size);
        if summary.unpacked_bytes > limits.max_unpacked_bytes {
            return Err(ArchiveError::TooLarge {
                limit: limits.max_unpacked_bytes,
                entry: named,
            });
        }
        // This entry's content (in 512-byte blocks), then the next entry's metadata.
        let consumed = entry.raw_file_position() + size.div_ceil(512) * 512;
        allowance.set(consumed + METADATA_LIMIT);
        visit(&normal, &mut entry)?;
    }
    if summary.entries == 0 {
        return Err(ArchiveError::Empty);
    }
    Ok(summary)
}

/// Checks an archive, reading every entry through (a truncated archive is noticed here).
pub fn check(reader: impl Read, limits: &Limits) -> Result<Summary, ArchiveError> {
    walk(reader, limits, |path, entry| {
        io::copy(entry, &mut io::sink())
            .map(drop)
            .map_err(|source| ArchiveError::Corrupt {
                at: Some(path.display().to_string()),
                source,
            })
    })
}

/// Unpacks an archive into `dest` (created if missing), permissions kept; `room(size)` is
/// asked before each entry is written (a disk budget) and its refusal ends the unpack.
pub fn unpack<E: std::fmt::Display>(
    reader: impl Read,
    dest: &Path,
    limits: &Limits,
    mut room: impl FnMut(u64) -> Result<(), E>,
) -> Result<Summary, ArchiveError> {
    std::fs::create_dir_all(dest).map_err(|source| ArchiveError::CreateDir {
        path: dest.display().to_string(),
        source,
    })?;
    walk(reader, limits, |path, entry| {
        let named = || path.display().to_string();
        room(entry.size()).map_err(|e| ArchiveError::NoRoom {
            entry: named(),
            reason: e.to_string(),
        })?;
        entry.set_preserve_permissions(true);
        match entry.unpack_in(dest) {
            Ok(true) => Ok(()),
            Ok(false) => Err(ArchiveError::Outside { entry: named() }),
            Err(source) => Err(ArchiveError::Unpack {
                entry: named(),
                source,
            }),
        }
    })
}

/// `path` taken from `base` (both relative), normalized, if it stays inside the root.
fn inside(base: &Path, path: &Path) -> Option<PathBuf> {
    let mut normal: Vec<&std::ffi::OsStr> = Vec::new();
    for component in base.components().chain(path.components()) {
        match component {
            Component::Normal(part) => normal.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                normal.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(normal.iter().collect())
}

fn describe(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "named pipe",
        EntryType::GNUSparse => "sparse file",
        _ => "special entry",
    }
}

fn unreadable(e: io::Error) -> ArchiveError {
    if e.kind() == io::ErrorKind::Other && e.to_string().contains(BUDGET) {
        ArchiveError::MetadataTooLarge
    } else {
        ArchiveError::Corrupt {
            at: None,
            source: e,
        }
    }
}

fn mib(bytes: u64) -> String {
    if bytes >= 1024 * 1024 {
        format!("{} MiB", bytes / 1024 / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

const BUDGET: &str = "archive metadata budget exceeded";

/// The decompressed stream, readable only up to what the entries so far account for.
pub struct Budgeted<R> {
    inner: R,
    read: u64,
    allowance: Rc<Cell<u64>>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.allowance.get().saturating_sub(self.read);
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::other(BUDGET));
        }
        let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..take])?;
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
