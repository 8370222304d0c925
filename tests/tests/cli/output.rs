//! Output for scripts and people: tests run without a terminal, so tables come as plain aligned
//! columns (no box drawing); `--no-headers`; `-o wide|name|json|yaml`; help text; the config
//! file found through `XDG_CONFIG_HOME` (and `PREXORCTL_CONFIG` before it, `HOME` after it).

use std::collections::BTreeSet;
use std::process::Stdio;

use anyhow::{Context, ensure};

use crate::Stack;
use crate::ctl::Ctl;

/// Characters of box drawing (comfy-table's presets and ASCII borders).
const BOX: &[char] = &[
    '│', '─', '┌', '┐', '└', '┘', '├', '┤', '┼', '╭', '╰', '═', '|', '+',
];

/// The character offset of `word` in `line`.
fn column_of(line: &str, word: &str) -> anyhow::Result<usize> {
    let at = line
        .find(word)
        .with_context(|| format!("{word:?} in {line:?}"))?;
    Ok(line[..at].chars().count())
}

/// `groups list` and `instances list` as plain columns, aligned under their headers.
fn plain_tables(ctl: &Ctl) -> anyhow::Result<()> {
    let out = ctl.ok(&["groups", "list"])?;
    ensure!(!out.contains(BOX), "no box drawing off a terminal:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines.len() == 2 && lines[0].starts_with("NAME ") && lines[1].starts_with("lobby "),
        "a header and one row:\n{out}"
    );
    // Each value starts where its header does.
    let header = lines[0];
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    ensure!(row[1] == "1", "lobby's revision: {row:?}");
    ensure!(
        column_of(header, "REVISION")? == column_of(lines[1], " 1 ")? + 1,
        "REVISION aligned:\n{out}"
    );
    ensure!(
        column_of(header, "SCALING")? == column_of(lines[1], "STATIC")?,
        "SCALING aligned:\n{out}"
    );
    ensure!(
        lines.iter().all(|l| l.trim_end() == *l),
        "no trailing blanks:\n{out}"
    );

    let bare = ctl.ok(&["groups", "list", "--no-headers"])?;
    ensure!(
        bare.lines().count() == 1 && bare.starts_with("lobby "),
        "--no-headers: only the row:\n{bare}"
    );

    let names = ctl.ok(&["instances", "list", "-o", "name"])?;
    let names: BTreeSet<&str> = names.lines().collect();
    ensure!(
        names.contains("lobby-1") && names.iter().all(|n| !n.contains(' ')),
        "-o name: one id per line: {names:?}"
    );
    ensure!(
        ctl.ok(&["groups", "list", "-o", "name"])? == "lobby\n",
        "-o name of groups"
    );
    ensure!(
        ctl.ok(&["groups", "get", "lobby", "-o", "name"])? == "lobby\n",
        "-o name of one group"
    );

    let wide = ctl.ok(&["groups", "list", "-o", "wide"])?;
    let narrow_header = header.split_whitespace().count();
    let wide_header = wide.lines().next().unwrap_or_default();
    ensure!(
        wide_header.starts_with(header) && wide_header.contains("PLATFORM"),
        "-o wide adds columns after the usual ones:\n{wide}"
    );
    ensure!(
        wide_header.split_whitespace().count() > narrow_header && !wide.contains(BOX),
        "{wide}"
    );
    let nodes = ctl.ok(&["nodes", "list", "-o", "wide"])?;
    ensure!(
        nodes.contains("HEARTBEAT") && nodes.contains("node-1"),
        "{nodes}"
    );

    // One object: key and value in two aligned columns.
    let shown = ctl.ok(&["groups", "get", "lobby"])?;
    ensure!(!shown.contains(BOX), "{shown}");
    let name = shown
        .lines()
        .find(|l| l.starts_with("name "))
        .with_context(|| format!("a name line:\n{shown}"))?;
    let revision = shown
        .lines()
        .find(|l| l.starts_with("revision "))
        .with_context(|| format!("a revision line:\n{shown}"))?;
    ensure!(
        name.ends_with(" lobby")
            && revision.ends_with(" 1")
            && column_of(name, "lobby")? == revision.len() - 1,
        "values aligned:\n{shown}"
    );

    // An empty list says so on stderr and prints no row.
    let none = ctl.run(&["instances", "list", "--group", "nobody"], None)?;
    ensure!(
        none.success && none.stdout.is_empty() && none.stderr.contains("(none)"),
        "{:?} {}",
        none.stdout,
        none.stderr
    );
    ensure!(
        ctl.ok(&["instances", "list", "--group", "nobody", "-o", "name"])?
            .is_empty(),
        "-o name of nothing"
    );
    Ok(())
}

/// Help on every subcommand (the unit test walks them all; here the binary shows it).
fn help(ctl: &Ctl) -> anyhow::Result<()> {
    ctl.says(
        &["groups", "apply", "--help"],
        &["--file", "The spec file", "The group's name"],
    )?;
    ctl.says(&["context", "--help"], &["rename", "current", "delete"])?;
    ctl.says(&["--help"], &["--no-headers", "wide", "name"])?;
    Ok(())
}

/// The config file: `PREXORCTL_CONFIG`, else `$XDG_CONFIG_HOME/prexorctl/config.json`, else
/// `$HOME/.config/prexorctl/config.json`.
fn config_file(ctl: &Ctl, dir: &std::path::Path) -> anyhow::Result<()> {
    let xdg = dir.join("xdg");
    let home = dir.join("home");
    std::fs::create_dir_all(xdg.join("prexorctl"))?;
    std::fs::create_dir_all(home.join(".config/prexorctl"))?;
    let run = |args: &[&str], envs: &[(&str, &std::path::Path)], keep: bool| {
        let mut command = ctl.command(args);
        if !keep {
            command.env_remove("PREXORCTL_CONFIG");
        }
        command.env_remove("XDG_CONFIG_HOME").env_remove("HOME");
        for (key, value) in envs {
            command.env(key, value);
        }
        let output = command
            .stdin(Stdio::null())
            .output()
            .context("running prexorctl")?;
        anyhow::Ok((
            output.status.success(),
            String::from_utf8(output.stdout)?,
            String::from_utf8(output.stderr)?,
        ))
    };
    // Nothing under XDG_CONFIG_HOME yet: no context there.
    let (ok, _, err) = run(&["context", "current"], &[("XDG_CONFIG_HOME", &xdg)], false)?;
    ensure!(!ok && err.contains("no current context"), "{err}");
    std::fs::copy(ctl.config(), xdg.join("prexorctl/config.json"))?;
    let (ok, out, err) = run(&["context", "current"], &[("XDG_CONFIG_HOME", &xdg)], false)?;
    ensure!(ok && out == "local\n", "XDG_CONFIG_HOME: {out} {err}");
    let (ok, out, err) = run(
        &["groups", "list", "-o", "name"],
        &[("XDG_CONFIG_HOME", &xdg), ("HOME", &home)],
        false,
    )?;
    ensure!(ok && out == "lobby\n", "signed in through XDG: {out} {err}");
    // PREXORCTL_CONFIG wins over XDG_CONFIG_HOME.
    let empty = dir.join("xdg-empty");
    let (ok, out, err) = run(
        &["context", "current"],
        &[("XDG_CONFIG_HOME", &empty)],
        true,
    )?;
    ensure!(
        ok && out == "local\n",
        "PREXORCTL_CONFIG first: {out} {err}"
    );
    // Without XDG_CONFIG_HOME: under HOME.
    let (ok, _, err) = run(&["context", "current"], &[("HOME", &home)], false)?;
    ensure!(!ok && err.contains("no current context"), "{err}");
    std::fs::copy(ctl.config(), home.join(".config/prexorctl/config.json"))?;
    let (ok, out, err) = run(&["context", "current"], &[("HOME", &home)], false)?;
    ensure!(ok && out == "local\n", "HOME: {out} {err}");
    Ok(())
}

/// Plain tables, names, wide, help and the config file's place.
pub fn output(stack: &Stack, dir: &std::path::Path) -> anyhow::Result<()> {
    plain_tables(&stack.ctl)?;
    help(&stack.ctl)?;
    config_file(&stack.ctl, dir)
}
