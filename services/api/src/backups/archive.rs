//! The backup archive: a tar.gz of `manifest.json` (format, version, cluster id, per-collection
//! count and SHA-256, per-blob size), `manifest.mac`, one JSON-lines file per collection and one
//! file per blob. The MAC is an HMAC-SHA256 of the manifest under a key only the cluster holds
//! (`cluster_secrets`, never in a backup), so it vouches for every file the manifest hashes: an
//! archive this cluster made is told apart from one made or edited elsewhere.

use prexor_archive::ArchiveError;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use mongodb::bson::{Bson, Document};
use prexor_domain::{StreamHash, hex, is_sha256_hex, now_ms, sha256_hex};
use prexor_store::{Store, StoreError};
use serde_json::{Value, json};
use sha2::Sha256;

use super::FORMAT;

/// The cluster's key for archive MACs, created on first use.
pub async fn mac_key(store: &Store) -> Result<Vec<u8>, StoreError> {
    crate::app::cluster_secret(store, "backup-hmac", "the backup MAC key").await
}

fn mac_of(key: &[u8], manifest: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(manifest);
    mac
}

/// An archive read back and checked against its manifest. Its blobs wait in a spool
/// directory (removed with the archive), never in memory.
pub struct Archive {
    pub manifest: Value,
    pub collections: BTreeMap<String, Vec<Document>>,
    /// Each blob's hash and spooled file.
    pub blobs: BTreeMap<String, PathBuf>,
    /// The manifest exactly as stored, and the MAC that came with it (absent in archives made
    /// before archives carried one).
    manifest_bytes: Vec<u8>,
    mac: Option<Vec<u8>>,
    _spool: tempfile::TempDir,
}

impl Archive {
    /// Whether this cluster made the archive (its MAC checks out under `key`).
    pub fn made_with(&self, key: &[u8]) -> bool {
        self.mac
            .as_ref()
            .is_some_and(|mac| mac_of(key, &self.manifest_bytes).verify_slice(mac).is_ok())
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    text.len()
        .is_multiple_of(2)
        .then(|| {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten()
}

fn jsonl(docs: &[Document]) -> String {
    let mut out = String::new();
    for doc in docs {
        out.push_str(
            &Bson::Document(doc.clone())
                .into_canonical_extjson()
                .to_string(),
        );
        out.push('\n');
    }
    out
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: StreamHash,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A packed archive on disk.
pub struct Packed {
    pub manifest: Value,
    pub hash: String,
    pub size: u64,
}

/// Packs the snapshot into a tar.gz at `out` with its manifest and the manifest's MAC under
/// `key`; `blobs` are read from their files as they are written.
pub fn pack(
    out: &Path,
    key: &[u8],
    manifest_base: Value,
    collections: &BTreeMap<String, Vec<Document>>,
    blobs: &BTreeMap<String, PathBuf>,
) -> Result<Packed, String> {
    let mut texts: Vec<(String, Vec<u8>)> = Vec::new();
    let mut listed = serde_json::Map::new();
    for (name, docs) in collections {
        let text = jsonl(docs).into_bytes();
        listed.insert(
            name.clone(),
            json!({ "count": docs.len(), "sha256": sha256_hex(&text) }),
        );
        texts.push((format!("collections/{name}.jsonl"), text));
    }
    let mut blob_sizes = serde_json::Map::new();
    for (hash, path) in blobs {
        let size = std::fs::metadata(path)
            .map_err(|e| format!("blob {hash}: {e}"))?
            .len();
        blob_sizes.insert(hash.clone(), json!(size));
    }
    let mut manifest = manifest_base;
    manifest["collections"] = Value::Object(listed);
    manifest["blobs"] = Value::Object(blob_sizes);
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    let file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Hashing {
            inner: std::io::BufWriter::new(file),
            hash: StreamHash::default(),
        },
        flate2::Compression::default(),
    ));
    let mut append = |path: &str, size: u64, content: &mut dyn Read| -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o600);
        header.set_mtime((now_ms() / 1000) as u64);
        header.set_cksum();
        builder.append_data(&mut header, path, content)
    };
    let mut small = |path: &str, bytes: &[u8]| append(path, bytes.len() as u64, &mut &bytes[..]);
    small("manifest.json", &manifest_bytes).map_err(|e| e.to_string())?;
    let mac = hex(&mac_of(key, &manifest_bytes).finalize().into_bytes());
    small("manifest.mac", mac.as_bytes()).map_err(|e| e.to_string())?;
    for (path, bytes) in &texts {
        small(path, bytes).map_err(|e| e.to_string())?;
    }
    for (hash, path) in blobs {
        let mut file = std::fs::File::open(path).map_err(|e| format!("blob {hash}: {e}"))?;
        let size = file
            .metadata()
            .map_err(|e| format!("blob {hash}: {e}"))?
            .len();
        append(&format!("blobs/{hash}"), size, &mut file).map_err(|e| e.to_string())?;
    }
    let mut hashing = builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(|e| e.to_string())?;
    hashing.flush().map_err(|e| e.to_string())?;
    let size = hashing.hash.len();
    Ok(Packed {
        manifest,
        hash: hashing.hash.finish(),
        size,
    })
}

/// Reads an archive within `limits` and checks every count and hash against its manifest;
/// what is wrong otherwise, naming the file. Blobs are hashed as they are spooled to a
/// directory of the archive's own. (Who made it is [`Archive::made_with`].)
pub fn read(reader: impl Read, limits: &prexor_archive::Limits) -> Result<Archive, String> {
    let spool = tempfile::Builder::new()
        .prefix("prexor-backup-")
        .tempdir()
        .map_err(|e| format!("cannot create a spool directory: {e}"))?;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut spooled: BTreeMap<String, (PathBuf, String, u64)> = BTreeMap::new();
    prexor_archive::walk(reader, limits, |path, entry| {
        let name = path.to_string_lossy().into_owned();
        let corrupt = |source: std::io::Error| ArchiveError::Corrupt {
            at: Some(name.clone()),
            source,
        };
        if let Some(hash) = name.strip_prefix("blobs/") {
            if !is_sha256_hex(hash) {
                return Err(ArchiveError::Refused {
                    entry: name.clone(),
                    reason: "not named by a SHA-256 (blobs/<hash>)".into(),
                });
            }
            let target = spool.path().join(hash);
            let mut out = Hashing {
                inner: std::fs::File::create(&target).map_err(|e| ArchiveError::Refused {
                    entry: name.clone(),
                    reason: format!("cannot spool it: {e}"),
                })?,
                hash: StreamHash::default(),
            };
            std::io::copy(entry, &mut out).map_err(corrupt)?;
            let size = out.hash.len();
            spooled.insert(hash.to_owned(), (target, out.hash.finish(), size));
        } else {
            let mut content = Vec::new();
            entry.read_to_end(&mut content).map_err(corrupt)?;
            files.insert(name, content);
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    let manifest_bytes = files
        .remove("manifest.json")
        .ok_or("the archive has no manifest.json (is it a PrexorCloud backup?)")?;
    let manifest: Value = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| format!("manifest.json is not JSON: {e}"))?;
    let mac = match files.remove("manifest.mac") {
        Some(text) => {
            Some(unhex(&String::from_utf8_lossy(&text)).ok_or("manifest.mac is not a hex MAC")?)
        }
        None => None,
    };
    if manifest["format"].as_i64() != Some(FORMAT) {
        return Err(format!(
            "manifest.json has format {}, this version reads format {FORMAT}",
            manifest["format"]
        ));
    }
    let mut collections = BTreeMap::new();
    for (name, expected) in manifest["collections"].as_object().into_iter().flatten() {
        let path = format!("collections/{name}.jsonl");
        let text = files
            .remove(&path)
            .ok_or_else(|| format!("{path} is missing from the archive"))?;
        let hash = sha256_hex(&text);
        if Some(hash.as_str()) != expected["sha256"].as_str() {
            return Err(format!(
                "{path} was altered: its SHA-256 is {hash}, the manifest says {}",
                expected["sha256"]
            ));
        }
        let text = String::from_utf8(text).map_err(|_| format!("{path} is not UTF-8"))?;
        let mut docs = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let value: Value = serde_json::from_str(line)
                .map_err(|e| format!("{path} line {}: not JSON ({e})", n + 1))?;
            match Bson::try_from(value) {
                Ok(Bson::Document(doc)) => docs.push(doc),
                _ => return Err(format!("{path} line {}: not a document", n + 1)),
            }
        }
        if Some(docs.len() as u64) != expected["count"].as_u64() {
            return Err(format!(
                "{path} holds {} documents, the manifest says {}",
                docs.len(),
                expected["count"]
            ));
        }
        collections.insert(name.clone(), docs);
    }
    let mut blobs = BTreeMap::new();
    for (hash, size) in manifest["blobs"].as_object().into_iter().flatten() {
        let (path, actual, actual_size) = spooled
            .remove(hash)
            .ok_or_else(|| format!("blobs/{hash} is missing from the archive"))?;
        if actual != *hash || Some(actual_size) != size.as_u64() {
            return Err(format!(
                "blobs/{hash} was altered (its content no longer has that SHA-256 or size)"
            ));
        }
        blobs.insert(hash.clone(), path);
    }
    if let Some(extra) = files
        .keys()
        .next()
        .cloned()
        .or_else(|| spooled.keys().next().map(|h| format!("blobs/{h}")))
    {
        return Err(format!("{extra} is in the archive but not in its manifest"));
    }
    Ok(Archive {
        manifest,
        collections,
        blobs,
        manifest_bytes,
        mac,
        _spool: spool,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    const KEY: &[u8] = b"a key of thirty-two bytes or so!";
    const LIMITS: prexor_archive::Limits = prexor_archive::Limits {
        max_entries: 100,
        max_unpacked_bytes: 1 << 20,
    };

    fn collections() -> BTreeMap<String, Vec<Document>> {
        let mut collections = BTreeMap::new();
        collections.insert(
            prexor_model::groups::GROUPS.to_owned(),
            vec![doc! { "_id": "lobby", "revision": 3_i64, "spec": { "memoryMb": 512_i64 } }],
        );
        collections.insert(prexor_model::access::USERS.to_owned(), vec![]);
        collections
    }

    /// An archive packed in `dir` with one blob, its bytes and manifest.
    fn sample(dir: &Path) -> (Vec<u8>, Value) {
        let blob = dir.join("blob");
        std::fs::write(&blob, b"layer").unwrap();
        let blobs = BTreeMap::from([(sha256_hex(b"layer"), blob)]);
        let out = dir.join("backup.tar.gz");
        let packed = pack(
            &out,
            KEY,
            json!({ "format": FORMAT, "clusterId": "c1" }),
            &collections(),
            &blobs,
        )
        .unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(packed.hash, sha256_hex(&bytes));
        assert_eq!(packed.size, bytes.len() as u64);
        (bytes, packed.manifest)
    }

    #[test]
    fn an_archive_round_trips_with_exact_types() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, manifest) = sample(dir.path());
        let archive = read(&bytes[..], &LIMITS).unwrap();
        assert_eq!(archive.manifest, manifest);
        assert!(archive.made_with(KEY));
        assert!(!archive.made_with(b"another cluster's key, 32 bytes!"));
        let lobby = &archive.collections[prexor_model::groups::GROUPS][0];
        assert_eq!(lobby.get_i64("revision"), Ok(3), "an i64 stays an i64");
        let spooled = archive.blobs.values().next().unwrap();
        assert_eq!(std::fs::read(spooled).unwrap(), b"layer");
    }

    #[test]
    fn damage_and_excess_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = sample(dir.path());
        let truncated = &bytes[..bytes.len() / 2];
        let err = read(truncated, &LIMITS).err().unwrap();
        assert!(err.contains("truncated or corrupt"), "{err}");
        assert!(
            read(&b"plain text"[..], &LIMITS)
                .err()
                .unwrap()
                .contains("gzip")
        );
        let tight = prexor_archive::Limits {
            max_entries: 3,
            ..LIMITS
        };
        let err = read(&bytes[..], &tight).err().unwrap();
        assert!(err.contains("more than 3 entries"), "{err}");

        // Altered content with the manifest left as it was.
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            if path == "collections/groups.jsonl" {
                content = String::from_utf8(content)
                    .unwrap()
                    .replace("512", "999")
                    .into_bytes();
            }
            files.push((path, content));
        }
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        for (path, content) in &files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o600);
            header.set_cksum();
            builder
                .append_data(&mut header, path, &content[..])
                .unwrap();
        }
        let altered = builder.into_inner().unwrap().finish().unwrap();
        let err = read(&altered[..], &LIMITS).err().unwrap();
        assert!(
            err.contains("collections/groups.jsonl was altered"),
            "{err}"
        );
    }

    #[test]
    fn an_archive_edited_with_its_hashes_redone_is_not_the_clusters() {
        // Someone adds an admin and rewrites the manifest's hash to match: the archive reads
        // back, but its MAC no longer vouches for it.
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = sample(dir.path());
        let original = read(&bytes[..], &LIMITS).unwrap();
        let mut collections = original.collections.clone();
        collections.insert(
            prexor_model::access::USERS.to_owned(),
            vec![doc! { "_id": "intruder", "roles": ["admin"] }],
        );
        let mut base = original.manifest.clone();
        base.as_object_mut().unwrap().remove("collections");
        let forged = dir.path().join("forged.tar.gz");
        pack(
            &forged,
            b"the forger's own key, 32 bytes!!",
            base,
            &collections,
            &original.blobs,
        )
        .unwrap();
        let read_back = read(std::fs::File::open(&forged).unwrap(), &LIMITS).unwrap();
        assert!(!read_back.made_with(KEY));
        assert_eq!(unhex("0aff"), Some(vec![0x0a, 0xff]));
        assert_eq!(unhex("0g"), None);
    }
}
