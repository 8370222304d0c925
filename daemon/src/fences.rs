//! The highest fencing token seen per scope, kept on disk so that a command from a deposed
//! scheduler is refused even after the daemon restarts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct Fences {
    path: PathBuf,
    marks: Mutex<BTreeMap<String, u64>>,
}

/// A command's token is lower than one already seen for its scope.
#[derive(Debug)]
pub struct Stale {
    pub highest: u64,
}

impl Fences {
    /// Loads `<dataDir>/fences.json` (absent: nothing seen yet).
    pub fn load(data_dir: &Path) -> anyhow::Result<Fences> {
        let path = data_dir.join("fences.json");
        let marks = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is corrupt ({e}); it records the fencing tokens this node has accepted",
                    path.display()
                )
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => return Err(anyhow::anyhow!("cannot read {}: {err}", path.display())),
        };
        Ok(Fences {
            path,
            marks: Mutex::new(marks),
        })
    }

    /// Accepts `token` for `scope` if no higher one was seen, recording it on disk first when it
    /// is new (so a restart cannot forget it).
    pub fn admit(&self, scope: &str, token: u64) -> Result<Result<(), Stale>, std::io::Error> {
        let mut marks = self.marks.lock().expect("fences lock");
        let highest = marks.get(scope).copied().unwrap_or(0);
        if token < highest {
            return Ok(Err(Stale { highest }));
        }
        if token > highest {
            let mut next = marks.clone();
            next.insert(scope.to_string(), token);
            let bytes = serde_json::to_vec_pretty(&next).map_err(std::io::Error::other)?;
            prexor_pki::write_private(&self.path, &bytes)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            *marks = next;
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_tokens_are_stale_across_reloads() {
        let dir = std::env::temp_dir().join(format!("prexor-fences-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fences = Fences::load(&dir).unwrap();
        assert!(fences.admit("group:lobby", 5).unwrap().is_ok());
        assert!(
            fences.admit("group:lobby", 5).unwrap().is_ok(),
            "equal is the same holder"
        );
        assert_eq!(
            fences.admit("group:lobby", 4).unwrap().unwrap_err().highest,
            5
        );
        assert!(fences.admit("group:other", 1).unwrap().is_ok());
        let reloaded = Fences::load(&dir).unwrap();
        assert_eq!(
            reloaded
                .admit("group:lobby", 3)
                .unwrap()
                .unwrap_err()
                .highest,
            5
        );
        std::fs::write(dir.join("fences.json"), b"{not json").unwrap();
        assert!(Fences::load(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
