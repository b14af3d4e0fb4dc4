//! Docs are part of the feature: every configuration key is in the table of
//! docs/configuration.md, every Lua script is described in lua/README.md and has a header
//! contract, the README stays short and maps every page of docs/, and every relative link
//! of the README and docs/ reaches an existing file and heading.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn every_config_key_is_documented_in_the_configuration_page() {
    let defaults: toml::Table = herald::config::DEFAULT_TOML.parse().unwrap();
    let table = std::fs::read_to_string(format!("{ROOT}/docs/configuration.md")).unwrap();
    for (section, keys) in &defaults {
        for key in keys.as_table().unwrap().keys() {
            let row = format!(
                "| `{section}.{key}` | `HERALD_{}__{}` |",
                section.to_uppercase(),
                key.to_uppercase()
            );
            assert!(
                table.contains(&row),
                "docs/configuration.md lacks the row of {section}.{key}"
            );
        }
    }
}

#[test]
fn every_script_is_documented() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/lua");
    let readme = std::fs::read_to_string(format!("{dir}/README.md")).unwrap();
    let mut count = 0;
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for sub in ["", "workflow"] {
        for entry in std::fs::read_dir(format!("{dir}/{sub}")).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    for path in files {
        if path.extension().is_some_and(|e| e == "lua") {
            count += 1;
            let name = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .trim_start_matches('/')
                .to_owned();
            assert!(
                readme.contains(&format!("`{name}`")),
                "lua/README.md lacks {name}"
            );
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.starts_with("--[["), "{name} lacks its header");
            assert!(
                text.contains("KEYS[1]") && text.contains("Returns"),
                "{name}: header lacks KEYS/Returns"
            );
        }
    }
    assert_eq!(
        count,
        herald::store::scripts::all().len(),
        "every script file has a wrapper"
    );
}

/// README.md and every page of docs/.
fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from(format!("{ROOT}/README.md"))];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(format!("{ROOT}/docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    files.extend(pages);
    files
}

/// The lines of a Markdown text outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            lines.push(line);
        }
    }
    lines
}

/// GitHub's anchor of a heading: lower-case, spaces to `-`, punctuation other than `-`
/// and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (a repeated heading gets `-1`, `-2`, …).
fn anchors(text: &str) -> HashSet<String> {
    let mut found = HashSet::new();
    for line in prose_lines(text) {
        let level = line.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&level) && line[level..].starts_with(' ') {
            let base = anchor(line[level..].trim_end_matches('#'));
            let mut name = base.clone();
            let mut n = 0;
            while found.contains(&name) {
                n += 1;
                name = format!("{base}-{n}");
            }
            found.insert(name);
        }
    }
    found
}

/// The targets of the inline links `[text](target)` of a Markdown text, outside code.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose_lines(text) {
        // Drop code spans (a link's text may hold one: [`x`](y) stays a link).
        let line: String = line.split('`').step_by(2).collect();
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            targets.push(target.to_owned());
            rest = &rest[end..];
        }
    }
    targets
}

#[test]
fn anchors_follow_githubs_rules() {
    assert_eq!(
        anchor("Acknowledged means replicated: `redis.wait_replicas`"),
        "acknowledged-means-replicated-rediswait_replicas"
    );
    assert_eq!(
        anchor("Limits: what the checks cost, and the noisy neighbour"),
        "limits-what-the-checks-cost-and-the-noisy-neighbour"
    );
    let found = anchors("# A\n```sh\n# not a heading\n```\n## A\n#no\n### Changing P ##\n");
    let expected: HashSet<String> = ["a", "a-1", "changing-p"].map(String::from).into();
    assert_eq!(found, expected);
    assert_eq!(
        link_targets(
            "see [x](a.md#b) and [`y`](../c \"t\"), `[z](code)`\n```\n[v](e)\n```\n[w](d)"
        ),
        ["a.md#b", "../c", "d"]
    );
}

#[test]
fn every_relative_link_reaches_a_file_and_a_heading() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let dir = file.parent().unwrap();
        let name = file.strip_prefix(ROOT).unwrap().display().to_string();
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, fragment) = match target.split_once('#') {
                Some((path, fragment)) => (path, Some(fragment)),
                None => (target.as_str(), None),
            };
            let resolved: PathBuf = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            if !resolved.exists() {
                broken.push(format!("{name}: {target}: no such file"));
                continue;
            }
            let Some(fragment) = fragment else { continue };
            if resolved.extension().is_none_or(|e| e != "md") {
                broken.push(format!(
                    "{name}: {target}: an anchor into a non-Markdown file"
                ));
                continue;
            }
            let headings = anchors(&std::fs::read_to_string(&resolved).unwrap());
            if !headings.contains(fragment) {
                broken.push(format!("{name}: {target}: no heading #{fragment}"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(
        checked > 30,
        "only {checked} relative links found: is the parser right?"
    );
}

#[test]
fn the_readme_is_short_and_maps_every_page() {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    assert!(
        readme.len() < 12 * 1024,
        "README.md is {} bytes: keep it under 12 KB, references belong in docs/",
        readme.len()
    );
    let map = readme
        .split("\n## Documentation\n")
        .nth(1)
        .expect("README.md has a '## Documentation' section");
    let map = map.split("\n## ").next().unwrap();
    for page in doc_files().iter().skip(1) {
        let link = format!("](docs/{})", page.file_name().unwrap().to_string_lossy());
        assert!(
            map.contains(&link),
            "README's Documentation section does not link {}",
            Path::new("docs").join(page.file_name().unwrap()).display()
        );
    }
    // The two set-up commands, exactly as CI and newcomers run them.
    assert!(readme.contains(
        "scripts/dev     # run Herald: api + worker + a private redis-server, prints a dev token\n"
    ));
    assert!(readme.contains("scripts/test    # run the tests: unit, integration"));
    // The tour calls the binary where scripts/dev builds it.
    assert!(readme.contains("\ntarget/release/herald history order-42\n"));
}
