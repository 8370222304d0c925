use super::*;

const ROOMY: Limits = Limits {
    max_entries: 100,
    max_unpacked_bytes: 1 << 20,
};

/// A tar.gz of `(path, content)` files, written with raw headers so that names the `tar`
/// builder would refuse (`../x`, `/etc/x`) can be made too.
fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    archive_with(
        files
            .iter()
            .map(|(p, c)| (*p, EntryType::Regular, *c, None)),
    )
}

fn archive_with<'a>(
    entries: impl IntoIterator<Item = (&'a str, EntryType, &'a [u8], Option<&'a str>)>,
) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::best(),
    ));
    for (path, kind, content, link) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        builder.append(&header, content).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

#[test]
fn an_ordinary_layer_is_counted_and_unpacked() {
    let bytes = archive(&[
        ("server.properties", b"port={port}\n"),
        ("plugins/a.jar", b"jar"),
    ]);
    let summary = check(&bytes[..], &ROOMY).unwrap();
    assert_eq!(
        summary,
        Summary {
            entries: 2,
            unpacked_bytes: 15
        }
    );
    let dir = tempfile::tempdir().unwrap();
    unpack(&bytes[..], dir.path(), &ROOMY, |_| Ok::<(), String>(())).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("plugins/a.jar")).unwrap(),
        b"jar"
    );
}

#[test]
fn a_zip_bomb_is_refused_from_its_headers() {
    // 64 MiB of zeros compresses to about 64 KiB; the limit is 1 MiB.
    let zeros = vec![0u8; 64 << 20];
    let bytes = archive(&[("world/region.mca", &zeros)]);
    assert!(bytes.len() < 1 << 20, "{}", bytes.len());
    let err = check(&bytes[..], &ROOMY).unwrap_err().to_string();
    assert!(err.contains("unpacks to more than 1 MiB"), "{err}");
    assert!(err.contains("world/region.mca"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    assert!(unpack(&bytes[..], dir.path(), &ROOMY, |_| Ok::<(), String>(())).is_err());
    assert!(
        !dir.path().join("world/region.mca").exists(),
        "nothing of it is written"
    );
}

#[test]
fn too_many_entries_are_refused() {
    let names: Vec<String> = (0..=ROOMY.max_entries).map(|i| format!("f{i}")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let err = check(&archive(&files)[..], &ROOMY).unwrap_err().to_string();
    assert!(err.contains("more than 100 entries"), "{err}");
}

#[test]
fn paths_and_links_stay_inside() {
    for (name, kind, link, problem) in [
        ("../escape", EntryType::Regular, None, "outside"),
        ("/etc/cron.d/x", EntryType::Regular, None, "outside"),
        ("a/../../x", EntryType::Regular, None, "outside"),
        ("world", EntryType::Symlink, Some("/root"), "links to /root"),
        (
            "plugins/up",
            EntryType::Symlink,
            Some("../../x"),
            "links to ../../x",
        ),
        ("hard", EntryType::Link, Some("../x"), "links to ../x"),
        ("dev", EntryType::Char, None, "character device"),
        ("pipe", EntryType::Fifo, None, "named pipe"),
    ] {
        let bytes = archive_with([(name, kind, &b""[..], link)]);
        let err = check(&bytes[..], &ROOMY).unwrap_err().to_string();
        assert!(err.contains(problem), "{name}: {err}");
    }
    // A link that goes up and stays inside is fine.
    let fine = archive_with([
        ("libs/a.jar", EntryType::Regular, &b"jar"[..], None),
        (
            "plugins/a.jar",
            EntryType::Symlink,
            &b""[..],
            Some("../libs/a.jar"),
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    unpack(&fine[..], dir.path(), &ROOMY, |_| Ok::<(), String>(())).unwrap();
    // A budget that says no stops the unpack before the file is written.
    let other = tempfile::tempdir().unwrap();
    let err = unpack(&fine[..], other.path(), &ROOMY, |size| {
        if size > 0 {
            Err("no room".to_owned())
        } else {
            Ok(())
        }
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("not unpacking libs/a.jar: no room"), "{err}");
    assert!(!other.path().join("libs/a.jar").exists());
    assert_eq!(
        std::fs::read(dir.path().join("plugins/a.jar")).unwrap(),
        b"jar"
    );
}

#[test]
fn damage_and_strangers_are_named() {
    let bytes = archive(&[("a", &[7u8; 4096][..])]);
    let err = check(&bytes[..bytes.len() / 2], &ROOMY)
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated or corrupt"), "{err}");
    let err = check(&b"PK\x03\x04 a zip"[..], &ROOMY)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not gzip-compressed"), "{err}");
    let err = check(&b""[..], &ROOMY).unwrap_err().to_string();
    assert!(err.contains("empty or not gzip"), "{err}");
    let err = check(&archive(&[])[..], &ROOMY).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn oversized_tar_metadata_is_refused_before_it_is_held() {
    // A PAX header that declares 8 MiB of extensions.
    let pax = vec![b'x'; 8 << 20];
    let bytes = archive_with([
        ("PaxHeaders/a", EntryType::XHeader, &pax[..], None),
        ("a", EntryType::Regular, &b"a"[..], None),
    ]);
    let err = check(&bytes[..], &ROOMY).unwrap_err().to_string();
    assert!(err.contains("tar metadata"), "{err}");
}
