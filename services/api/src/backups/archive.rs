//! The backup archive: a tar.gz of `manifest.json` (format, version, cluster id, per-collection
//! count and SHA-256, per-blob size), `manifest.mac`, one JSON-lines file per collection and one
//! file per blob. The MAC is an HMAC-SHA256 of the manifest under a key only the cluster holds
//! (`cluster_secrets`, never in a backup), so it vouches for every file the manifest hashes: an
//! archive this cluster made is told apart from one made or edited elsewhere.

use std::collections::BTreeMap;
use std::io::Read;

use hmac::{Hmac, Mac};
use mongodb::bson::{Bson, Document};
use prexor_domain::{now_ms, sha256_hex};
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

/// An archive read back and checked against its manifest.
pub struct Archive {
    pub manifest: Value,
    pub collections: BTreeMap<String, Vec<Document>>,
    pub blobs: BTreeMap<String, Vec<u8>>,
    /// The manifest exactly as stored, and the MAC that came with it (absent in archives made
    /// before archives carried one).
    manifest_bytes: Vec<u8>,
    mac: Option<Vec<u8>>,
}

impl Archive {
    /// Whether this cluster made the archive (its MAC checks out under `key`).
    pub fn made_with(&self, key: &[u8]) -> bool {
        self.mac
            .as_ref()
            .is_some_and(|mac| mac_of(key, &self.manifest_bytes).verify_slice(mac).is_ok())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// Packs the snapshot into a tar.gz with its manifest and the manifest's MAC under `key`.
pub fn pack(
    key: &[u8],
    manifest_base: Value,
    collections: &BTreeMap<String, Vec<Document>>,
    blobs: &BTreeMap<String, Vec<u8>>,
) -> Result<(Vec<u8>, Value), String> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut listed = serde_json::Map::new();
    for (name, docs) in collections {
        let text = jsonl(docs).into_bytes();
        listed.insert(
            name.clone(),
            json!({ "count": docs.len(), "sha256": sha256_hex(&text) }),
        );
        files.push((format!("collections/{name}.jsonl"), text));
    }
    let mut blob_sizes = serde_json::Map::new();
    for (hash, bytes) in blobs {
        blob_sizes.insert(hash.clone(), json!(bytes.len()));
        files.push((format!("blobs/{hash}"), bytes.clone()));
    }
    let mut manifest = manifest_base;
    manifest["collections"] = Value::Object(listed);
    manifest["blobs"] = Value::Object(blob_sizes);
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut append = |path: &str, bytes: &[u8]| -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime((now_ms() / 1000) as u64);
        header.set_cksum();
        builder.append_data(&mut header, path, bytes)
    };
    append("manifest.json", &manifest_bytes).map_err(|e| e.to_string())?;
    let mac = hex(&mac_of(key, &manifest_bytes).finalize().into_bytes());
    append("manifest.mac", mac.as_bytes()).map_err(|e| e.to_string())?;
    for (path, bytes) in &files {
        append(path, bytes).map_err(|e| e.to_string())?;
    }
    let gz = builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(|e| e.to_string())?;
    Ok((gz, manifest))
}

/// Reads an archive and checks every count and hash against its manifest; what is wrong
/// otherwise, naming the file. (Who made it is [`Archive::made_with`].)
pub fn unpack(bytes: &[u8]) -> Result<Archive, String> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Err("the archive is not gzip-compressed (expected a .tar.gz backup)".into());
    }
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let entries = tar
        .entries()
        .map_err(|e| format!("the archive is unreadable: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("the archive is truncated or corrupt: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("the archive has an unreadable path: {e}"))?
            .to_string_lossy()
            .into_owned();
        let mut content = Vec::new();
        entry
            .read_to_end(&mut content)
            .map_err(|e| format!("the archive is truncated or corrupt in {path}: {e}"))?;
        files.insert(path, content);
    }
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
        let path = format!("blobs/{hash}");
        let bytes = files
            .remove(&path)
            .ok_or_else(|| format!("{path} is missing from the archive"))?;
        if sha256_hex(&bytes) != *hash || Some(bytes.len() as u64) != size.as_u64() {
            return Err(format!(
                "{path} was altered (its content no longer has that SHA-256 or size)"
            ));
        }
        blobs.insert(hash.clone(), bytes);
    }
    if let Some(extra) = files.keys().next() {
        return Err(format!("{extra} is in the archive but not in its manifest"));
    }
    Ok(Archive {
        manifest,
        collections,
        blobs,
        manifest_bytes,
        mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    const KEY: &[u8] = b"a key of thirty-two bytes or so!";

    fn sample() -> (Vec<u8>, Value) {
        let mut collections = BTreeMap::new();
        collections.insert(
            "groups".to_owned(),
            vec![doc! { "_id": "lobby", "revision": 3_i64, "spec": { "memoryMb": 512_i64 } }],
        );
        collections.insert("users".to_owned(), vec![]);
        let mut blobs = BTreeMap::new();
        blobs.insert(sha256_hex(b"layer"), b"layer".to_vec());
        pack(
            KEY,
            json!({ "format": FORMAT, "clusterId": "c1" }),
            &collections,
            &blobs,
        )
        .unwrap()
    }

    #[test]
    fn an_archive_round_trips_with_exact_types() {
        let (bytes, manifest) = sample();
        let archive = unpack(&bytes).unwrap();
        assert_eq!(archive.manifest, manifest);
        assert!(archive.made_with(KEY));
        assert!(!archive.made_with(b"another cluster's key, 32 bytes!"));
        let lobby = &archive.collections["groups"][0];
        assert_eq!(lobby.get_i64("revision"), Ok(3), "an i64 stays an i64");
        assert_eq!(archive.blobs.values().next().unwrap(), b"layer");
    }

    #[test]
    fn damage_is_named() {
        let (bytes, _) = sample();
        let truncated = &bytes[..bytes.len() / 2];
        let err = unpack(truncated).err().unwrap();
        assert!(err.contains("truncated or corrupt"), "{err}");
        assert!(unpack(b"plain text").err().unwrap().contains("gzip"));

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
        let err = unpack(&altered).err().unwrap();
        assert!(
            err.contains("collections/groups.jsonl was altered"),
            "{err}"
        );
    }

    #[test]
    fn an_archive_edited_with_its_hashes_redone_is_not_the_clusters() {
        // Someone adds an admin and rewrites the manifest's hash to match: the archive reads
        // back, but its MAC no longer vouches for it.
        let (bytes, _) = sample();
        let original = unpack(&bytes).unwrap();
        let mut collections = original.collections.clone();
        collections.insert(
            "users".to_owned(),
            vec![doc! { "_id": "intruder", "roles": ["admin"] }],
        );
        let mut base = original.manifest.clone();
        base.as_object_mut().unwrap().remove("collections");
        let (forged, _) = pack(
            b"the forger's own key, 32 bytes!!",
            base,
            &collections,
            &original.blobs,
        )
        .unwrap();
        let read = unpack(&forged).unwrap();
        assert!(!read.made_with(KEY));
        assert_eq!(unhex("0aff"), Some(vec![0x0a, 0xff]));
        assert_eq!(unhex("0g"), None);
    }
}
