//! The dashboard's static files, embedded in the binary (`services/api/assets/`, the vendored
//! ones listed with their versions and SHA-256 in `VENDORED.md`) and served under
//! `/ui/assets/<hash>/<name>`: the hash is of the content, so a URL never changes meaning and
//! browsers may cache it for a year.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    /// The first 16 hex digits of its SHA-256: its URL's version.
    hash: String,
}

impl Asset {
    /// Where a page links it.
    pub fn url(&self) -> String {
        format!("/ui/assets/{}/{}", self.hash, self.name)
    }
}

macro_rules! embedded {
    ($($name:literal as $type:literal,)*) => {
        [$((
            $name,
            $type,
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $name)).as_slice(),
        ),)*]
    };
}

/// Every embedded file, in [`HTMX`], [`SSE`], [`STYLE`], [`CONSOLE`], [`UPLOAD`] order.
static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    embedded! {
        "htmx.min.js" as "text/javascript; charset=utf-8",
        "htmx-ext-sse.min.js" as "text/javascript; charset=utf-8",
        "dashboard.css" as "text/css; charset=utf-8",
        "console.js" as "text/javascript; charset=utf-8",
        "upload.js" as "text/javascript; charset=utf-8",
    }
    .into_iter()
    .map(|(name, content_type, bytes)| Asset {
        name,
        content_type,
        bytes,
        hash: hex(&Sha256::digest(bytes))[..16].to_owned(),
    })
    .collect()
});

pub const HTMX: usize = 0;
pub const SSE: usize = 1;
pub const STYLE: usize = 2;
/// The instance page's console (the project's own script).
pub const CONSOLE: usize = 3;
/// The template page's upload form (the project's own script).
pub const UPLOAD: usize = 4;

/// The embedded file `index` ([`HTMX`], [`SSE`], [`STYLE`], [`CONSOLE`]).
pub fn asset(index: usize) -> &'static Asset {
    &ASSETS[index]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `GET /ui/assets/{hash}/{name}`: the file, cached for a year; 404 for another hash (an old
/// page asking for a version this replica no longer has).
pub async fn serve(Path((hash, name)): Path<(String, String)>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name && a.hash == hash) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no dashboard asset {name:?} of version {hash:?}; reload the page"),
        )
            .into_response();
    };
    let mut response = asset.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `VENDORED.md` names each vendored file with its SHA-256: a file changed without updating
    /// the record (or the record without the file) fails here.
    #[test]
    fn vendored_files_match_their_recorded_sha256() {
        let record = include_str!("../../assets/VENDORED.md");
        // The vendored files are the minified ones; the others are the project's own.
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".min.js")) {
            let row = record
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", asset.name)))
                .unwrap_or_else(|| panic!("VENDORED.md has no row for {}", asset.name));
            let digest = hex(&Sha256::digest(asset.bytes));
            assert!(
                row.contains(&digest),
                "{} has SHA-256 {digest}, VENDORED.md says: {row}",
                asset.name
            );
        }
    }

    #[test]
    fn urls_carry_the_content_hash() {
        let style = asset(STYLE);
        assert_eq!(style.name, "dashboard.css");
        assert!(style.url().starts_with("/ui/assets/"));
        assert!(style.url().ends_with("/dashboard.css"));
        assert_eq!(style.url().split('/').nth(3).map(str::len), Some(16));
        assert_eq!(asset(HTMX).name, "htmx.min.js");
        assert_eq!(asset(SSE).name, "htmx-ext-sse.min.js");
        assert_eq!(asset(CONSOLE).name, "console.js");
        assert_eq!(asset(UPLOAD).name, "upload.js");
    }
}
