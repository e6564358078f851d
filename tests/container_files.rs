//! The container and dashboard files agree with the workspace (the `mesgate` package at the
//! root and the `mes-sim` simulator in `mes-sim/`), checked without Docker:
//! `Dockerfile`, `.dockerignore`, `docker-compose.yml`, `deploy/nginx-lb.conf`,
//! `config/docker.toml` and `deploy/grafana/mesgate-dashboard.json`.
//!
//! Nothing here builds an image or opens a socket. The compose file is read with the small
//! YAML-subset parser at the bottom (block mappings and sequences, `- key: value` items,
//! flow lists, quoted scalars, `|` block scalars); anything else in the file (anchors, flow
//! mappings) fails the test loudly rather than being misread.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use mesgate::config::{Config, Overrides};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ---------------------------------------------------------------------------------------
// The workspace: its packages, their binaries, the compose config.
// ---------------------------------------------------------------------------------------

fn manifest(rel: &str) -> toml::Value {
    toml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} does not parse: {e}"))
}

/// The `[workspace] members` of Cargo.toml other than the root package (`.`), as clean
/// relative directories (`mes-sim`).
fn members() -> Vec<String> {
    let root_manifest = manifest("Cargo.toml");
    let members: Vec<String> = root_manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .expect("Cargo.toml has [workspace] members")
        .iter()
        .map(|m| clean(m.as_str().expect("a member is a path")))
        .filter(|m| m != ".")
        .collect();
    for m in &members {
        assert!(
            !m.contains(['*', '?', '[']),
            "list workspace members by path, not glob: {m}"
        );
        assert!(
            root().join(m).join("Cargo.toml").is_file(),
            "workspace member {m} has no Cargo.toml"
        );
    }
    assert!(members.iter().any(|m| m == "mes-sim"), "{members:?}");
    members
}

/// The `[[bin]]` names of the workspace's packages: Cargo.toml's and every member's.
fn bins() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for rel in std::iter::once("Cargo.toml".to_owned())
        .chain(members().into_iter().map(|m| format!("{m}/Cargo.toml")))
    {
        let Some(tables) = manifest(&rel)
            .get("bin")
            .and_then(|b| b.as_array())
            .cloned()
        else {
            continue;
        };
        for b in &tables {
            let name = b["name"].as_str().expect("[[bin]] name").to_owned();
            assert!(
                names.insert(name.clone()),
                "two packages build a {name} binary"
            );
        }
    }
    assert!(
        names.contains("mesgate") && names.contains("mes-sim"),
        "the [[bin]] tables of Cargo.toml and its members: {names:?}"
    );
    names
}

fn docker_config() -> Config {
    let path = root().join("config/docker.toml");
    Config::load(&path, Overrides::default())
        .unwrap_or_else(|e| panic!("config/docker.toml does not load: {e}"))
}

/// `(listen port, admin port)` of config/docker.toml.
fn docker_ports() -> (u16, u16) {
    let c = docker_config();
    let admin = c
        .admin_listen
        .expect("config/docker.toml keeps the admin listener on (health checks, metrics)");
    (c.listen.port(), admin.port())
}

#[test]
fn docker_config_loads_and_listens_on_all_interfaces() {
    let c = docker_config();
    assert!(c.listen.ip().is_unspecified(), "listen {}", c.listen);
    let admin = c.admin_listen.unwrap();
    assert!(
        admin.ip().is_unspecified(),
        "admin.listen {admin}: Prometheus scrapes it from another container"
    );
    assert_eq!(c.upstream.scheme.as_str(), "http");
    assert!(
        c.redis.is_some(),
        "compose runs two replicas over one Redis"
    );
    assert!(!c.routes.routes().is_empty());
}

/// Removes a dotted key from a TOML table (no-op when absent).
fn remove_key(value: &mut toml::Value, dotted: &str) {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().unwrap();
    let mut v = value;
    for p in parts {
        match v.get_mut(p) {
            Some(next) => v = next,
            None => return,
        }
    }
    if let Some(t) = v.as_table_mut() {
        t.remove(last);
    }
}

#[test]
fn docker_config_differs_from_mesgate_toml_only_in_addresses() {
    let normalized = |rel: &str| {
        let mut v: toml::Value =
            toml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        for key in ["listen", "upstream", "admin.listen", "redis.url"] {
            remove_key(&mut v, key);
        }
        v
    };
    assert_eq!(
        normalized("config/docker.toml"),
        normalized("config/mesgate.toml"),
        "config/docker.toml must keep config/mesgate.toml's routes and settings; only \
         listen, upstream, admin.listen and redis.url may differ"
    );
}

// ---------------------------------------------------------------------------------------
// Dockerfile and .dockerignore.
// ---------------------------------------------------------------------------------------

/// One Dockerfile instruction, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    line: usize,
    /// Index of the build stage (0 = first FROM).
    stage: usize,
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let text = read("Dockerfile");
    let mut out = Vec::new();
    let mut stage = 0usize;
    let mut seen_from = false;
    let mut current: Option<(usize, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue; // Docker skips these inside continuations too.
        }
        let (start, mut acc) = current.take().unwrap_or((n + 1, String::new()));
        if let Some(body) = trimmed.strip_suffix('\\') {
            acc.push_str(body.trim_end());
            acc.push(' ');
            current = Some((start, acc));
            continue;
        }
        acc.push_str(trimmed);
        let (keyword, args) = acc.split_once(char::is_whitespace).unwrap_or((&acc, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            if seen_from {
                stage += 1;
            }
            seen_from = true;
        }
        out.push(Instruction {
            line: start,
            stage,
            keyword,
            args: args.trim().to_owned(),
        });
    }
    assert!(current.is_none(), "Dockerfile ends inside a continuation");
    out
}

fn instructions<'a>(all: &'a [Instruction], keyword: &str) -> Vec<&'a Instruction> {
    all.iter().filter(|i| i.keyword == keyword).collect()
}

/// The exec form `["a", "b"]` of ENTRYPOINT and CMD.
fn exec_form(i: &Instruction) -> Vec<String> {
    serde_json::from_str(&i.args).unwrap_or_else(|e| {
        panic!(
            "Dockerfile:{}: {} must use the exec form [\"...\"]: {e}",
            i.line, i.keyword
        )
    })
}

/// A COPY: flags (`--from=builder` → `from`), sources, destination.
#[derive(Debug)]
struct Copy {
    line: usize,
    stage: usize,
    from: Option<String>,
    sources: Vec<String>,
    dest: String,
}

fn copies(all: &[Instruction]) -> Vec<Copy> {
    instructions(all, "COPY")
        .into_iter()
        .chain(instructions(all, "ADD"))
        .map(|i| {
            let mut words: Vec<String> = Vec::new();
            let mut from = None;
            let mut rest = i.args.as_str();
            // Flags come first.
            while let Some(flag) = rest.strip_prefix("--") {
                let (word, tail) = flag.split_once(' ').unwrap_or((flag, ""));
                if let Some(stage) = word.strip_prefix("from=") {
                    from = Some(stage.to_owned());
                }
                rest = tail.trim_start();
            }
            if rest.starts_with('[') {
                words = serde_json::from_str(rest)
                    .unwrap_or_else(|e| panic!("Dockerfile:{}: bad JSON form: {e}", i.line));
            } else {
                words.extend(rest.split_whitespace().map(str::to_owned));
            }
            assert!(
                words.len() >= 2,
                "Dockerfile:{}: COPY needs src and dest",
                i.line
            );
            let dest = words.pop().unwrap();
            Copy {
                line: i.line,
                stage: i.stage,
                from,
                sources: words,
                dest,
            }
        })
        .collect()
}

/// A COPY source as a clean relative path (`./src/` → `src`).
fn clean(source: &str) -> String {
    let s = source.trim_start_matches("./").trim_end_matches('/');
    if s.is_empty() { ".".into() } else { s.into() }
}

/// Every file under `rel` (or `rel` itself), relative to the repository.
fn files_under(rel: &str) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let full = root().join(rel);
    let mut found = Vec::new();
    if full.is_dir() {
        walk(&full, &mut found);
    } else {
        found.push(full);
    }
    found
        .into_iter()
        .map(|p| {
            p.strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect()
}

/// `.dockerignore` patterns (negations, which only re-include, are left out).
fn dockerignore() -> Vec<String> {
    read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/').to_owned())
        .collect()
}

/// Go `filepath.Match`-style glob (`*`, `?`) plus `**` across directories.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) if pattern.get(1) == Some(&b'*') => {
            let rest = pattern[2..].strip_prefix(b"/").unwrap_or(&pattern[2..]);
            (0..=text.len()).any(|i| glob(rest, &text[i..]))
        }
        (Some(b'*'), _) => {
            let limit = text.iter().position(|&c| c == b'/').unwrap_or(text.len());
            (0..=limit).any(|i| glob(&pattern[1..], &text[i..]))
        }
        (Some(b'?'), Some(&c)) if c != b'/' => glob(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p == t => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

/// Whether `.dockerignore` leaves `file` (or one of its directories) out of the context.
fn ignored_by<'a>(patterns: &'a [String], file: &str) -> Option<&'a str> {
    let parts: Vec<&str> = file.split('/').collect();
    (1..=parts.len())
        .map(|n| parts[..n].join("/"))
        .find_map(|prefix| {
            patterns
                .iter()
                .find(|p| glob(p.as_bytes(), prefix.as_bytes()))
                .map(String::as_str)
        })
}

#[test]
fn glob_matches_like_dockerignore() {
    assert!(glob(b"target", b"target"));
    assert!(glob(b"*.log", b"build.log"));
    assert!(!glob(b"*.log", b"logs/build.log"));
    assert!(glob(b"**/*.log", b"logs/build.log"));
    assert!(glob(b"src/*.rs", b"src/main.rs"));
    assert!(!glob(b"src", b"srcs"));
    let patterns = vec!["target".to_owned(), "*.log".to_owned()];
    assert_eq!(ignored_by(&patterns, "target/release/x"), Some("target"));
    assert_eq!(ignored_by(&patterns, "src/main.rs"), None);
}

#[test]
fn dockerfile_copies_sources_that_exist_and_are_not_ignored() {
    let all = dockerfile();
    let patterns = dockerignore();
    let local: Vec<Copy> = copies(&all)
        .into_iter()
        .filter(|c| c.from.is_none())
        .collect();
    assert!(!local.is_empty(), "no COPY from the build context");
    for copy in &local {
        for source in &copy.sources {
            assert!(
                !source.contains(['*', '?', '[']) && !source.contains("://"),
                "Dockerfile:{}: keep COPY sources plain paths: {source}",
                copy.line
            );
            let rel = clean(source);
            assert!(
                !Path::new(&rel)
                    .components()
                    .any(|c| matches!(c, Component::ParentDir)),
                "Dockerfile:{}: {source} leaves the context",
                copy.line
            );
            assert!(
                root().join(&rel).exists(),
                "Dockerfile:{}: COPY source {source} does not exist",
                copy.line
            );
            for file in files_under(&rel) {
                if let Some(p) = ignored_by(&patterns, &file) {
                    panic!(
                        "Dockerfile:{}: COPY {source} needs {file}, which .dockerignore \
                         leaves out ({p})",
                        copy.line
                    );
                }
            }
        }
    }
    // The builder has what `cargo build --locked` needs.
    let builder: BTreeSet<String> = local
        .iter()
        .filter(|c| c.stage == 0)
        .flat_map(|c| c.sources.iter().map(|s| clean(s)))
        .collect();
    for needed in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(
            builder.contains(needed),
            "builder lacks {needed}: {builder:?}"
        );
    }
    // And every workspace member's manifest and sources (the member itself, or both).
    for member in members() {
        for needed in [format!("{member}/Cargo.toml"), format!("{member}/src")] {
            assert!(
                builder.contains(&needed) || builder.contains(&member),
                "builder lacks {needed} (workspace member {member}): {builder:?}"
            );
        }
    }
}

/// Lexically resolves `..` and `.` (the file need not exist).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn builder_copies_every_file_the_sources_embed() {
    let all = dockerfile();
    let builder: Vec<String> = copies(&all)
        .into_iter()
        .filter(|c| c.from.is_none() && c.stage == 0)
        .flat_map(|c| c.sources.into_iter().map(|s| clean(&s)))
        .collect();
    let mut embedded = Vec::new();
    let sources = std::iter::once("src".to_owned())
        .chain(members().into_iter().map(|m| format!("{m}/src")))
        .flat_map(|dir| files_under(&dir));
    for file in sources.filter(|f| f.ends_with(".rs")) {
        let text = read(&file);
        for marker in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in text.match_indices(marker) {
                let rest = &text[at + marker.len()..];
                let lit = &rest[..rest.find('"').expect("closing quote")];
                let dir = Path::new(&file).parent().unwrap();
                let target = normalize(&dir.join(lit));
                embedded.push((file.clone(), target.to_string_lossy().replace('\\', "/")));
            }
        }
    }
    assert!(
        embedded.iter().any(|(_, t)| t == "config/demo.toml"),
        "expected src/demo.rs to embed config/demo.toml: {embedded:?}"
    );
    for (file, target) in embedded {
        assert!(
            builder
                .iter()
                .any(|s| target == *s || target.starts_with(&format!("{s}/"))),
            "{file} embeds {target}, which the builder stage does not COPY ({builder:?})"
        );
    }
}

#[test]
fn dockerfile_builds_and_runs_the_crates_binaries() {
    let all = dockerfile();
    let bins = bins();
    let froms = instructions(&all, "FROM");
    assert!(froms.len() >= 2, "multi-stage build expected");
    let builder_name = froms[0]
        .args
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0].eq_ignore_ascii_case("as"))
        .map(|w| w[1].to_owned())
        .expect("the first stage is named (FROM ... AS builder)");

    let build = instructions(&all, "RUN")
        .into_iter()
        .find(|r| r.args.contains("cargo build"))
        .expect("a RUN with cargo build");
    for flag in ["--release", "--locked"] {
        assert!(build.args.contains(flag), "cargo build without {flag}");
    }
    let built: BTreeSet<String> = build
        .args
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1].to_owned())
        .collect();
    assert!(!built.is_empty(), "cargo build names its --bin targets");
    for b in &built {
        assert!(
            bins.contains(b),
            "--bin {b} is not a [[bin]] of the workspace"
        );
    }

    // What the runtime stage takes from the builder are binaries that were built.
    let from_builder: Vec<Copy> = copies(&all)
        .into_iter()
        .filter(|c| c.from.as_deref() == Some(builder_name.as_str()))
        .collect();
    assert!(
        !from_builder.is_empty(),
        "nothing copied from {builder_name}"
    );
    let mut shipped = BTreeSet::new();
    for c in &from_builder {
        for s in &c.sources {
            let name = s.rsplit('/').next().unwrap();
            assert!(
                built.contains(name),
                "Dockerfile:{}: {s} is not built",
                c.line
            );
            assert!(
                build.args.contains(&format!("target/release/{name}")),
                "the build step does not copy target/release/{name} out"
            );
            shipped.insert(name.to_owned());
        }
        assert_eq!(c.dest.trim_end_matches('/'), "/usr/local/bin", "on PATH");
    }
    assert_eq!(
        shipped, bins,
        "the image ships every binary of the workspace"
    );

    let entrypoint = exec_form(instructions(&all, "ENTRYPOINT").last().expect("ENTRYPOINT"));
    assert_eq!(entrypoint, ["mesgate"]);
    let cmd = exec_form(instructions(&all, "CMD").last().expect("CMD"));
    assert_eq!(cmd, ["--config", CONFIG_IN_IMAGE]);

    let user = instructions(&all, "USER")
        .last()
        .expect("USER")
        .args
        .clone();
    let user = user.split(':').next().unwrap();
    assert!(
        user == "mesgate" || user == "10001",
        "runs as the unprivileged mesgate user (uid 10001), not {user}"
    );
}

/// Where the gateway reads its config in the image (Dockerfile CMD) and where compose
/// mounts config/docker.toml.
const CONFIG_IN_IMAGE: &str = "/etc/mesgate/mesgate.toml";

/// The `http://127.0.0.1:PORT/PATH` URLs of a text.
fn loopback_urls(text: &str) -> Vec<(u16, String)> {
    text.match_indices("http://127.0.0.1")
        .filter_map(|(at, _)| {
            let rest = &text[at + "http://127.0.0.1".len()..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',')
                .unwrap_or(rest.len());
            let url = &rest[..end];
            let url = url.strip_prefix(':')?;
            let (port, path) = url.split_once('/').unwrap_or((url, ""));
            Some((port.parse().ok()?, format!("/{path}")))
        })
        .collect()
}

#[test]
fn dockerfile_ports_and_healthcheck_match_the_docker_config() {
    let all = dockerfile();
    let (listen, admin) = docker_ports();
    let exposed: BTreeSet<u16> = instructions(&all, "EXPOSE")
        .iter()
        .flat_map(|i| i.args.split_whitespace())
        .map(|p| p.split('/').next().unwrap().parse().expect("EXPOSE port"))
        .collect();
    assert_eq!(exposed, BTreeSet::from([listen, admin]));

    let health = instructions(&all, "HEALTHCHECK");
    let health = health.last().expect("HEALTHCHECK");
    assert_eq!(
        loopback_urls(&health.args),
        [(admin, "/healthz".to_owned())],
        "HEALTHCHECK calls the admin listener's /healthz: {}",
        health.args
    );
    // curl must be in the runtime image for it.
    assert!(health.args.contains("curl"));
    let runtime_stage = health.stage;
    assert!(
        instructions(&all, "RUN")
            .iter()
            .any(|r| r.stage == runtime_stage
                && r.args.contains("install")
                && r.args.contains("curl")),
        "the runtime stage installs curl for HEALTHCHECK"
    );
}

// ---------------------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------------------

fn compose() -> Yaml {
    parse_yaml("docker-compose.yml", &read("docker-compose.yml"))
}

fn services(c: &Yaml) -> &[(String, Yaml)] {
    c.get("services").expect("compose has services").entries()
}

/// The image of the Dockerfile: the tag of services with `build`.
fn local_image(c: &Yaml) -> String {
    let tags: BTreeSet<&str> = services(c)
        .iter()
        .filter(|(_, s)| s.get("build").is_some())
        .map(|(name, s)| {
            s.get("image")
                .and_then(Yaml::str)
                .unwrap_or_else(|| panic!("service {name} builds but has no image tag"))
        })
        .collect();
    assert_eq!(tags.len(), 1, "one tag for the one Dockerfile: {tags:?}");
    tags.into_iter().next().unwrap().to_owned()
}

/// The binary a service of the local image runs, or `None` for other images.
fn binary_of(c: &Yaml, service: &Yaml) -> Option<String> {
    let image = service.get("image").and_then(Yaml::str);
    if service.get("build").is_none() && image != Some(local_image(c).as_str()) {
        return None;
    }
    match service.get("entrypoint") {
        Some(e) => Some(e.words().first().expect("entrypoint").clone()),
        None => {
            Some(exec_form(instructions(&dockerfile(), "ENTRYPOINT").last().unwrap())[0].clone())
        }
    }
}

/// Services of the local image running the gateway in the default set (no profile).
fn replicas(c: &Yaml) -> Vec<(&str, &Yaml)> {
    services(c)
        .iter()
        .filter(|(_, s)| binary_of(c, s).as_deref() == Some("mesgate"))
        .filter(|(_, s)| s.get("profiles").is_none())
        .map(|(n, s)| (n.as_str(), s))
        .collect()
}

/// The container side of each published port.
fn container_ports(service: &Yaml) -> Vec<u16> {
    service
        .get("ports")
        .map(Yaml::list)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let target = match p {
                Yaml::Map(_) => p.get("target").and_then(Yaml::str).expect("ports target"),
                _ => p.str().expect("port mapping").rsplit(':').next().unwrap(),
            };
            target
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap_or_else(|_| panic!("port {p:?}"))
        })
        .collect()
}

/// `(source, target)` of each volume of a service.
fn volumes(service: &Yaml) -> Vec<(String, String)> {
    service
        .get("volumes")
        .map(Yaml::list)
        .unwrap_or_default()
        .iter()
        .map(|v| match v {
            Yaml::Map(_) => (
                v.get("source").and_then(Yaml::str).unwrap_or("").to_owned(),
                v.get("target")
                    .and_then(Yaml::str)
                    .expect("volume target")
                    .to_owned(),
            ),
            _ => {
                let parts: Vec<&str> = v.str().expect("volume").split(':').collect();
                assert!(parts.len() >= 2, "volume {v:?} without a target");
                (parts[0].to_owned(), parts[1].to_owned())
            }
        })
        .collect()
}

/// The environment of a service (map or `KEY=value` list form).
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(Yaml::Map(m)) => m
            .iter()
            .map(|(k, v)| (k.clone(), v.str().unwrap_or("").to_owned()))
            .collect(),
        Some(list) => list
            .list()
            .iter()
            .map(|kv| {
                let (k, v) = kv
                    .str()
                    .unwrap()
                    .split_once('=')
                    .unwrap_or((kv.str().unwrap(), ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
    }
}

fn service<'a>(c: &'a Yaml, name: &str) -> &'a Yaml {
    c.get("services")
        .and_then(|s| s.get(name))
        .unwrap_or_else(|| panic!("compose has no service {name}"))
}

/// `host:port` of a URL like `redis://redis:6379/0`.
fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap();
    let (host, port) = authority.rsplit_once(':').expect("explicit port");
    (host.to_owned(), port.parse().expect("port"))
}

#[test]
fn compose_has_the_expected_services() {
    let c = compose();
    let names: BTreeSet<&str> = services(&c).iter().map(|(n, _)| n.as_str()).collect();
    for want in ["redis", "mes-sim", "mesgate-1", "mesgate-2", "lb"] {
        assert!(names.contains(want), "no service {want}: {names:?}");
    }
    assert_eq!(
        replicas(&c).iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        ["mesgate-1", "mesgate-2"]
    );
    for optional in ["prometheus", "grafana"] {
        if let Some(s) = c.get("services").unwrap().get(optional) {
            let profiles = s.get("profiles").map(Yaml::words).unwrap_or_default();
            assert_eq!(
                profiles,
                ["observability"],
                "{optional} runs only on demand"
            );
        }
    }
}

#[test]
fn compose_runs_binaries_of_the_crate() {
    let c = compose();
    let bins = bins();
    let mut used = BTreeSet::new();
    for (name, s) in services(&c) {
        if let Some(bin) = binary_of(&c, s) {
            assert!(
                bins.contains(&bin),
                "service {name} runs {bin}, not a [[bin]]"
            );
            used.insert(bin);
        }
    }
    assert_eq!(used, bins, "compose runs both binaries");
}

#[test]
fn compose_cluster_profile_runs_a_gateway_on_six_joined_nodes() {
    let c = compose();
    let in_profile = |s: &Yaml| s.get("profiles").map(Yaml::words) == Some(vec!["cluster".into()]);
    let nodes: Vec<String> = (1..=6).map(|i| format!("redis-node-{i}")).collect();
    for n in &nodes {
        let s = service(&c, n);
        assert!(in_profile(s), "{n} is in profile cluster");
        let cmd = s.get("command").map(Yaml::words).unwrap_or_default();
        let after = |flag: &str| {
            let i = cmd.iter().position(|w| w == flag);
            i.and_then(|i| cmd.get(i + 1)).map(String::as_str)
        };
        assert_eq!(after("--cluster-enabled"), Some("yes"), "{n}");
        // The cluster hands out addresses the gateway resolves: the service names.
        assert_eq!(
            after("--cluster-announce-hostname"),
            Some(n.as_str()),
            "{n}"
        );
        assert_eq!(
            after("--cluster-preferred-endpoint-type"),
            Some("hostname"),
            "{n}"
        );
    }
    let init = service(&c, "redis-cluster-init");
    assert!(in_profile(init));
    let script = init
        .get("command")
        .map(Yaml::words)
        .unwrap_or_default()
        .join(" ");
    let joined: Vec<String> = nodes.iter().map(|n| format!("{n}:6379")).collect();
    assert!(
        script.contains(&format!("--cluster create {}", joined.join(" ")))
            && script.contains("--cluster-replicas 1"),
        "the init joins the six nodes, one replica per primary: {script}"
    );
    let waits = |s: &Yaml| -> Vec<String> {
        s.get("depends_on")
            .map(|d| d.entries().iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(waits(init), nodes, "the init waits for every node");

    let gw = service(&c, "mesgate-cluster");
    assert!(in_profile(gw));
    assert_eq!(binary_of(&c, gw).as_deref(), Some("mesgate"));
    assert_eq!(
        gw.get("depends_on")
            .and_then(|d| d.get("redis-cluster-init"))
            .and_then(|d| d.get("condition"))
            .and_then(Yaml::str),
        Some("service_completed_successfully"),
        "the gateway starts on a joined cluster"
    );
    let env = environment(gw);
    let overrides = Overrides {
        upstream: env.get("MESGATE_UPSTREAM").cloned(),
        redis_url: env.get("MESGATE_REDIS_URL").cloned(),
        redis_mode: env.get("MESGATE_REDIS_MODE").cloned(),
        admin_token: env.get("MESGATE_ADMIN_TOKEN").cloned(),
        ..Overrides::default()
    };
    let effective = Config::load(&root().join("config/docker.toml"), overrides)
        .unwrap_or_else(|e| panic!("mesgate-cluster: config under its environment: {e}"));
    let seeds: Vec<String> = nodes.iter().map(|n| format!("redis://{n}:6379")).collect();
    match &effective.redis.as_ref().expect("a shared tier").topology {
        mesgate::config::RedisTopology::Cluster { nodes } => assert_eq!(nodes, &seeds),
        other => panic!("mesgate-cluster runs {other:?}, not a cluster"),
    }
    let (listen, admin) = docker_ports();
    let mut ports = container_ports(gw);
    ports.sort();
    let mut want = vec![listen, admin];
    want.sort();
    assert_eq!(
        ports, want,
        "mesgate-cluster publishes its listener and admin port"
    );
}

#[test]
fn compose_ports_match_the_docker_config() {
    let c = compose();
    let (listen, admin) = docker_ports();
    for (name, s) in replicas(&c) {
        let ports = container_ports(s);
        assert!(!ports.is_empty(), "{name} publishes nothing");
        for p in ports {
            assert!(
                p == listen || p == admin,
                "{name} publishes container port {p}; config/docker.toml listens on \
                 {listen} and {admin}"
            );
        }
        // The health check probes the admin listener inside the container.
        let test = s
            .get("healthcheck")
            .and_then(|h| h.get("test"))
            .map(Yaml::words)
            .unwrap_or_default()
            .join(" ");
        assert_eq!(
            loopback_urls(&test),
            [(admin, "/healthz".to_owned())],
            "{name} healthcheck"
        );
        // The gateway reads the mounted file: the command names it, or the image's CMD does.
        let command = s.get("command").map(Yaml::words).unwrap_or_default();
        if !command.is_empty() {
            let at = command.iter().position(|w| w == "--config" || w == "-c");
            let path = at.map(|i| command[i + 1].as_str());
            assert_eq!(path, Some(CONFIG_IN_IMAGE), "{name} command {command:?}");
        }
        let mounts = volumes(s);
        assert!(
            mounts
                .iter()
                .any(|(src, dst)| clean(src) == "config/docker.toml" && dst == CONFIG_IN_IMAGE),
            "{name} mounts config/docker.toml at {CONFIG_IN_IMAGE}: {mounts:?}"
        );
    }
}

#[test]
fn compose_environment_agrees_with_the_docker_config() {
    let c = compose();
    let config = docker_config();
    let sim = service(&c, "mes-sim");
    assert_eq!(binary_of(&c, sim).as_deref(), Some("mes-sim"));
    let sim_command = sim.get("command").map(Yaml::words).unwrap_or_default();
    let listen_at = sim_command
        .iter()
        .position(|w| w == "--listen")
        .expect("mes-sim --listen");
    let sim_listen = &sim_command[listen_at + 1];
    assert!(
        sim_listen.starts_with("0.0.0.0:"),
        "mes-sim --listen {sim_listen}"
    );
    let sim_port: u16 = sim_listen.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(
        config.upstream.authority.host(),
        "mes-sim",
        "upstream is the compose service"
    );
    assert_eq!(config.upstream.authority.port_u16(), Some(sim_port));

    let redis_url = &config.redis.as_ref().unwrap().url;
    let (redis_host, redis_port) = host_port(redis_url);
    assert_eq!((redis_host.as_str(), redis_port), ("redis", 6379));
    service(&c, "redis");

    for (name, s) in replicas(&c) {
        let env = environment(s);
        for key in env.keys().filter(|k| k.starts_with("MESGATE_")) {
            assert!(
                [
                    "MESGATE_LISTEN",
                    "MESGATE_UPSTREAM",
                    "MESGATE_REDIS_URL",
                    "MESGATE_ADMIN_LISTEN",
                    "MESGATE_ADMIN_TOKEN"
                ]
                .contains(&key.as_str()),
                "{name}: {key} is not an override mesgate reads"
            );
        }
        // What the replica actually runs with: the file under the environment.
        let overrides = Overrides {
            listen: env.get("MESGATE_LISTEN").cloned(),
            upstream: env.get("MESGATE_UPSTREAM").cloned(),
            redis_url: env.get("MESGATE_REDIS_URL").cloned(),
            admin_listen: env.get("MESGATE_ADMIN_LISTEN").cloned(),
            admin_token: env.get("MESGATE_ADMIN_TOKEN").cloned(),
            redis_mode: env.get("MESGATE_REDIS_MODE").cloned(),
            redis_master: env.get("MESGATE_REDIS_MASTER").cloned(),
        };
        let effective = Config::load(&root().join("config/docker.toml"), overrides)
            .unwrap_or_else(|e| panic!("{name}: config under its environment: {e}"));
        assert_eq!(effective.listen, config.listen, "{name}");
        assert_eq!(effective.admin_listen, config.admin_listen, "{name}");
        assert_eq!(
            effective.upstream.authority, config.upstream.authority,
            "{name}: MESGATE_UPSTREAM and config/docker.toml disagree"
        );
        assert_eq!(
            effective.redis.as_ref().map(|r| &r.url),
            Some(redis_url),
            "{name}: MESGATE_REDIS_URL and config/docker.toml disagree"
        );
        let token = env
            .get("MESGATE_ADMIN_TOKEN")
            .expect("admin token for purge");
        assert!(
            token.starts_with("${MESGATE_ADMIN_TOKEN:-") && token.ends_with('}'),
            "{name}: the token comes from the caller's environment, with a demo default: {token}"
        );
    }
}

#[test]
fn compose_mounts_files_that_exist() {
    let c = compose();
    let mut checked = 0;
    for (name, s) in services(&c) {
        for (src, _) in volumes(s) {
            if src.starts_with("./") || src.starts_with("../") || src.starts_with('/') {
                assert!(
                    !src.starts_with('/') && !src.starts_with("../"),
                    "{name}: mount {src} outside the repository"
                );
                assert!(
                    root().join(&src).exists(),
                    "{name} mounts {src}, which does not exist"
                );
                checked += 1;
            }
        }
        if let Some(Yaml::Scalar(ctx)) = s.get("build") {
            assert!(
                root().join(ctx).join("Dockerfile").exists(),
                "{name}: build {ctx}"
            );
        }
    }
    if let Some(configs) = c.get("configs") {
        for (name, cfg) in configs.entries() {
            match (cfg.get("file"), cfg.get("content")) {
                (Some(file), None) => {
                    let file = file.str().unwrap();
                    assert!(root().join(file).exists(), "config {name}: {file} missing");
                    checked += 1;
                }
                (None, Some(_)) => {}
                _ => panic!("config {name}: give file or content"),
            }
        }
        // Every config a service uses is defined.
        for (name, s) in services(&c) {
            for used in s.get("configs").map(Yaml::list).unwrap_or_default() {
                let source = used
                    .get("source")
                    .and_then(Yaml::str)
                    .or(used.str())
                    .unwrap();
                assert!(
                    configs.get(source).is_some(),
                    "{name} uses undefined config {source}"
                );
            }
        }
    }
    assert!(
        checked >= 3,
        "config/docker.toml, nginx-lb.conf, the dashboard"
    );
}

#[test]
fn compose_dependencies_exist_and_healthy_ones_have_health_checks() {
    let c = compose();
    let image_has_healthcheck = !instructions(&dockerfile(), "HEALTHCHECK").is_empty();
    for (name, s) in services(&c) {
        let Some(deps) = s.get("depends_on") else {
            continue;
        };
        let deps: Vec<(String, Option<String>)> = match deps {
            Yaml::Map(m) => m
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.get("condition").and_then(Yaml::str).map(str::to_owned),
                    )
                })
                .collect(),
            list => list.words().into_iter().map(|d| (d, None)).collect(),
        };
        for (dep, condition) in deps {
            let target = service(&c, &dep);
            if condition.as_deref() == Some("service_healthy") {
                let own = target.get("healthcheck").is_some();
                let inherited = binary_of(&c, target).is_some() && image_has_healthcheck;
                assert!(
                    own || inherited,
                    "{name} waits for {dep} to be healthy, but it has no healthcheck"
                );
            }
            // A service of a profile cannot be a dependency of one without it.
            if s.get("profiles").is_none() {
                assert!(
                    target.get("profiles").is_none(),
                    "{name} depends on {dep}, which is in a profile"
                );
            }
        }
    }
    // The simulator does not serve the admin port the image's HEALTHCHECK probes.
    assert!(service(&c, "mes-sim").get("healthcheck").is_some());
}

// ---------------------------------------------------------------------------------------
// deploy/nginx-lb.conf and the Prometheus scrape config
// ---------------------------------------------------------------------------------------

/// nginx directives as `(name, args)`, comments dropped, blocks flattened.
fn nginx_directives() -> Vec<(String, Vec<String>)> {
    let text: String = read("deploy/nginx-lb.conf")
        .lines()
        .map(|l| l.split('#').next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    text.split([';', '{', '}'])
        .map(|d| d.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .filter(|d| !d.is_empty())
        .map(|mut d| {
            let name = d.remove(0);
            (name, d)
        })
        .collect()
}

#[test]
fn load_balancer_sends_to_every_replica_on_the_listen_port() {
    let c = compose();
    let (listen, _) = docker_ports();
    let directives = nginx_directives();
    let upstream = directives
        .iter()
        .find(|(n, _)| n == "upstream")
        .map(|(_, a)| a[0].clone())
        .expect("an upstream block");
    assert!(
        directives
            .iter()
            .any(|(n, a)| n == "proxy_pass" && a[0] == format!("http://{upstream}")),
        "proxy_pass to the upstream {upstream}"
    );
    let servers: BTreeSet<(String, u16)> = directives
        .iter()
        .filter(|(n, a)| n == "server" && !a.is_empty())
        .map(|(_, a)| host_port(&a[0]))
        .collect();
    let want: BTreeSet<(String, u16)> = replicas(&c)
        .iter()
        .map(|(n, _)| ((*n).to_owned(), listen))
        .collect();
    assert_eq!(servers, want, "nginx balances over exactly the replicas");
    assert!(
        !directives
            .iter()
            .any(|(n, _)| n == "ip_hash" || n == "hash" || n == "least_conn"),
        "round robin, so consecutive requests reach different replicas"
    );

    let lb = service(&c, "lb");
    let mounts = volumes(lb);
    let (_, conf_target) = mounts
        .iter()
        .find(|(src, _)| clean(src) == "deploy/nginx-lb.conf")
        .expect("lb mounts deploy/nginx-lb.conf");
    assert!(conf_target.starts_with("/etc/nginx/"), "{conf_target}");
    let nginx_listen: BTreeSet<u16> = directives
        .iter()
        .filter(|(n, _)| n == "listen")
        .map(|(_, a)| {
            a[0].rsplit(':')
                .next()
                .unwrap()
                .parse()
                .expect("listen port")
        })
        .collect();
    let published = container_ports(lb);
    assert!(!published.is_empty(), "lb is published on the host");
    for p in published {
        assert!(
            nginx_listen.contains(&p),
            "lb publishes {p}; nginx listens on {nginx_listen:?}"
        );
    }
    let lb_test = lb
        .get("healthcheck")
        .and_then(|h| h.get("test"))
        .map(Yaml::words)
        .unwrap_or_default()
        .join(" ");
    for (port, path) in loopback_urls(&lb_test) {
        let _ = port;
        assert!(
            directives
                .iter()
                .any(|(n, a)| n == "location" && a.last() == Some(&path)),
            "lb healthcheck path {path} is not a location of nginx-lb.conf"
        );
    }
}

#[test]
fn prometheus_scrapes_every_replica_on_the_admin_port() {
    let c = compose();
    let Some(prom) = c.get("services").unwrap().get("prometheus") else {
        return;
    };
    let (_, admin) = docker_ports();
    let source = prom
        .get("configs")
        .map(Yaml::list)
        .unwrap_or_default()
        .iter()
        .find(|u| {
            u.get("target")
                .and_then(Yaml::str)
                .is_some_and(|t| t.ends_with("prometheus.yml"))
        })
        .and_then(|u| u.get("source").and_then(Yaml::str))
        .expect("prometheus gets its prometheus.yml from a compose config")
        .to_owned();
    let cfg = c.get("configs").unwrap().get(&source).unwrap();
    let text = match cfg.get("content") {
        Some(content) => content.str().unwrap().to_owned(),
        None => read(cfg.get("file").unwrap().str().unwrap()),
    };
    let prometheus = parse_yaml("prometheus.yml", &text);
    let targets: BTreeSet<(String, u16)> = prometheus
        .get("scrape_configs")
        .map(Yaml::list)
        .unwrap_or_default()
        .iter()
        .flat_map(|job| {
            job.get("static_configs")
                .map(Yaml::list)
                .unwrap_or_default()
        })
        .flat_map(|sc| sc.get("targets").map(Yaml::words).unwrap_or_default())
        .map(|t| host_port(&t))
        .collect();
    let want: BTreeSet<(String, u16)> = replicas(&c)
        .iter()
        .map(|(n, _)| ((*n).to_owned(), admin))
        .collect();
    assert_eq!(
        targets, want,
        "Prometheus scrapes each replica's admin listener"
    );
}

// ---------------------------------------------------------------------------------------
// deploy/grafana/mesgate-dashboard.json
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the gateway exports, with its labels. The dashboard may use no other.
const METRICS: &[(&str, Kind, &[&str])] = &[
    (
        "mesgate_requests_total",
        Kind::Counter,
        &["route", "outcome"],
    ),
    (
        "mesgate_request_duration_seconds",
        Kind::Histogram,
        &["outcome"],
    ),
    (
        "mesgate_upstream_requests_total",
        Kind::Counter,
        &["route", "status_class"],
    ),
    ("mesgate_upstream_duration_seconds", Kind::Histogram, &[]),
    ("mesgate_singleflight_waiting", Kind::Gauge, &[]),
    ("mesgate_invalidations_total", Kind::Counter, &["reason"]),
    ("mesgate_bus_latency_seconds", Kind::Histogram, &[]),
    ("mesgate_redis_errors_total", Kind::Counter, &["kind"]),
    ("mesgate_redis_breaker_open", Kind::Gauge, &[]),
    ("mesgate_l1_bytes", Kind::Gauge, &[]),
    ("mesgate_l1_entries", Kind::Gauge, &[]),
    ("mesgate_epoch_counters", Kind::Gauge, &[]),
    ("mesgate_l1_evictions_total", Kind::Counter, &["cause"]),
    ("mesgate_l2_fenced_total", Kind::Counter, &[]),
];

/// The values of the `outcome` label.
const OUTCOMES: &[&str] = &[
    "hit_l1", "hit_l2", "miss", "stale", "bypass", "forward", "write",
];

/// Labels Prometheus adds to every scraped series, and `le` of histogram buckets.
const TARGET_LABELS: &[&str] = &["instance", "job"];

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("deploy/grafana/mesgate-dashboard.json"))
        .unwrap_or_else(|e| panic!("the dashboard is not JSON: {e}"))
}

/// Every string in a JSON document.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// Every panel, rows' nested panels included.
fn panels(d: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// A `mesgate_*` name in a query resolved to the metric it belongs to.
fn metric_of(token: &str) -> Option<(&'static str, Kind, &'static [&'static str])> {
    if let Some(&(n, k, l)) = METRICS.iter().find(|(n, _, _)| *n == token) {
        return Some((n, k, l));
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = token.strip_suffix(suffix)?;
        METRICS
            .iter()
            .find(|(n, k, _)| *n == base && *k == Kind::Histogram)
            .map(|&(n, k, l)| (n, k, l))
    })
}

/// `(token, selector body)` of each `mesgate_*` name in a query.
fn selectors(query: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let bytes = query.as_bytes();
    let mut at = 0;
    while let Some(found) = query[at..].find("mesgate_") {
        let start = at + found;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        at = end;
        if preceded {
            continue;
        }
        let token = query[start..end].to_owned();
        let body = if bytes.get(end) == Some(&b'{') {
            let close = query[end..].find('}').expect("closing brace") + end;
            at = close + 1;
            Some(query[end + 1..close].to_owned())
        } else {
            None
        };
        out.push((token, body));
    }
    out
}

/// `(label, op, value)` of each matcher in a selector body.
fn matchers(body: &str) -> Vec<(String, String, String)> {
    split_outside_quotes(body, ',')
        .into_iter()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| {
            let op_at = m.find(['=', '!']).unwrap_or_else(|| panic!("matcher {m}"));
            let label = m[..op_at].trim().to_owned();
            let rest = &m[op_at..];
            let op_len =
                if rest.starts_with("=~") || rest.starts_with("!=") || rest.starts_with("!~") {
                    2
                } else {
                    1
                };
            let value = rest[op_len..].trim().trim_matches('"').to_owned();
            (label, rest[..op_len].to_owned(), value)
        })
        .collect()
}

/// The labels of every `by (...)` / `without (...)` of a query.
fn grouping_labels(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    for keyword in ["by", "without"] {
        for (at, _) in query.match_indices(keyword) {
            let before = query[..at].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let rest = query[at + keyword.len()..].trim_start();
            let Some(rest) = rest.strip_prefix('(') else {
                continue;
            };
            let inner = &rest[..rest.find(')').expect("closing paren")];
            out.extend(
                inner
                    .split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
        }
    }
    out
}

/// Every query of the dashboard: panel targets and templating variables.
fn queries(d: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(e.to_owned());
            }
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["definition"].as_str() {
            out.push(q.to_owned());
        }
        match &v["query"] {
            serde_json::Value::String(q) if v["type"] == "query" => out.push(q.clone()),
            serde_json::Value::Object(o) => {
                if let Some(q) = o.get("query").and_then(|q| q.as_str()) {
                    out.push(q.to_owned());
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn dashboard_parses_and_queries_through_the_datasource_variable() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    assert!(
        d["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u.len() <= 40)
    );
    assert!(d["title"].as_str().is_some());
    let vars = d["templating"]["list"].as_array().expect("templating");
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds["query"], "prometheus");
    let var = format!("${{{}}}", ds["name"].as_str().unwrap());

    let mut ids = BTreeSet::new();
    let all = panels(&d);
    let graphs: Vec<_> = all.iter().filter(|p| p["type"] != "row").collect();
    assert!(graphs.len() >= 10, "{} panels", graphs.len());
    for p in &all {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24, "panel {id} overflows the grid");
    }
    for p in graphs {
        let title = p["title"].as_str().unwrap_or("?");
        assert_eq!(p["datasource"]["uid"], var.as_str(), "panel {title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "panel {title}"
            );
            if !t["datasource"].is_null() {
                assert_eq!(t["datasource"]["uid"], var.as_str(), "panel {title}");
            }
        }
    }
}

#[test]
fn dashboard_uses_only_metrics_the_gateway_exports() {
    let d = dashboard();
    let mut all = Vec::new();
    strings(&d, &mut all);
    for s in &all {
        for (token, _) in selectors(s) {
            assert!(
                metric_of(&token).is_some(),
                "the dashboard names {token}, which mesgate does not export (typo?) in: {s}"
            );
        }
    }
}

#[test]
fn dashboard_queries_use_only_labels_and_outcomes_the_metrics_have() {
    let d = dashboard();
    for q in queries(&d) {
        let mut allowed: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
        for (token, body) in selectors(&q) {
            let (name, kind, labels) = metric_of(&token).unwrap();
            allowed.extend(labels.iter().copied());
            if kind == Kind::Histogram {
                allowed.insert("le");
                assert_ne!(
                    token, name,
                    "a histogram is queried by _bucket, _sum or _count: {q}"
                );
            }
            for (label, op, value) in matchers(body.as_deref().unwrap_or("")) {
                assert!(
                    labels.contains(&label.as_str()) || TARGET_LABELS.contains(&label.as_str()),
                    "{token} has no label {label}: {q}"
                );
                if label == "outcome" && !value.contains('$') && !value.contains(".*") {
                    let values: Vec<&str> = if op.ends_with('~') {
                        value.split('|').collect()
                    } else {
                        vec![value.as_str()]
                    };
                    for v in values {
                        assert!(OUTCOMES.contains(&v), "unknown outcome {v:?} in: {q}");
                    }
                }
            }
        }
        for label in grouping_labels(&q) {
            assert!(
                allowed.contains(label.as_str()),
                "grouping by {label}, which {q} lacks"
            );
        }
    }
}

#[test]
fn dashboard_shows_every_metric() {
    let d = dashboard();
    let used: BTreeSet<&str> = queries(&d)
        .iter()
        .flat_map(|q| selectors(q))
        .filter_map(|(token, _)| metric_of(&token).map(|(n, _, _)| n))
        .collect();
    for (name, _, _) in METRICS {
        assert!(used.contains(name), "no panel shows {name}");
    }
    // The hit ratio divides hits by every cache lookup.
    let ratio = queries(&d)
        .into_iter()
        .find(|q| q.contains("hit_l1|hit_l2\"") && q.contains('/'))
        .expect("a hit ratio query");
    assert!(ratio.contains("miss") && ratio.contains("stale"), "{ratio}");
}

#[test]
fn dashboard_query_helpers_find_names_labels_and_groupings() {
    let q = r#"sum by (le, outcome) (rate(mesgate_request_duration_seconds_bucket{instance=~"$instance", outcome=~"hit_l1|miss"}[5m])) / mesgate_l1_bytes"#;
    let s = selectors(q);
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].0, "mesgate_request_duration_seconds_bucket");
    assert_eq!(s[1], ("mesgate_l1_bytes".to_owned(), None));
    let m = matchers(s[0].1.as_deref().unwrap());
    assert_eq!(m[1], ("outcome".into(), "=~".into(), "hit_l1|miss".into()));
    assert_eq!(grouping_labels(q), ["le", "outcome"]);
    assert!(metric_of("mesgate_request_duration_seconds_count").is_some());
    assert!(metric_of("mesgate_requests_total_count").is_none());
    assert!(metric_of("mesgate_request_total").is_none());
}

// ---------------------------------------------------------------------------------------
// A YAML subset, enough for docker-compose.yml and the Prometheus config in it.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Scalar(String),
    List(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn str(&self) -> Option<&str> {
        match self {
            Yaml::Scalar(s) => Some(s),
            _ => None,
        }
    }

    fn list(&self) -> &[Yaml] {
        match self {
            Yaml::List(l) => l,
            _ => &[],
        }
    }

    fn entries(&self) -> &[(String, Yaml)] {
        match self {
            Yaml::Map(m) => m,
            _ => &[],
        }
    }

    /// A list of scalars, or a scalar split at whitespace (compose's two command forms).
    fn words(&self) -> Vec<String> {
        match self {
            Yaml::Scalar(s) => s.split_whitespace().map(str::to_owned).collect(),
            Yaml::List(l) => l
                .iter()
                .map(|i| i.str().expect("a list of scalars").to_owned())
                .collect(),
            Yaml::Map(_) => panic!("expected a list, found a mapping"),
        }
    }
}

struct Line {
    no: usize,
    indent: usize,
    /// Without the comment and trailing blanks; empty for blank and comment lines.
    text: String,
    raw: String,
}

struct YamlParser<'a> {
    file: &'a str,
    lines: Vec<Line>,
    pos: usize,
}

fn parse_yaml(file: &str, text: &str) -> Yaml {
    let lines = text
        .lines()
        .enumerate()
        .map(|(n, raw)| {
            let indent = raw.len() - raw.trim_start_matches(' ').len();
            assert!(
                !raw[indent..].starts_with('\t'),
                "{file}:{}: tab indentation",
                n + 1
            );
            let text = strip_comment(raw).trim_end().to_owned();
            Line {
                no: n + 1,
                indent,
                text: if text.trim().is_empty() {
                    String::new()
                } else {
                    text
                },
                raw: raw.to_owned(),
            }
        })
        .collect();
    let mut p = YamlParser {
        file,
        lines,
        pos: 0,
    };
    let Some(first) = p.next_significant() else {
        return Yaml::Map(Vec::new());
    };
    let doc = p.block(p.lines[first].indent);
    if let Some(i) = p.next_significant() {
        panic!("{file}:{}: unexpected line", p.lines[i].no);
    }
    doc
}

impl YamlParser<'_> {
    fn next_significant(&self) -> Option<usize> {
        (self.pos..self.lines.len()).find(|&i| !self.lines[i].text.is_empty())
    }

    fn fail(&self, i: usize, what: &str) -> ! {
        panic!(
            "{}:{}: {what}: {}",
            self.file, self.lines[i].no, self.lines[i].raw
        )
    }

    fn block(&mut self, indent: usize) -> Yaml {
        let i = self.next_significant().expect("a block");
        if is_item(&self.lines[i].text) {
            self.sequence(indent)
        } else {
            self.mapping(indent)
        }
    }

    fn mapping(&mut self, indent: usize) -> Yaml {
        let mut entries: Vec<(String, Yaml)> = Vec::new();
        while let Some(i) = self.next_significant() {
            let line = &self.lines[i];
            if line.indent < indent || (line.indent == indent && is_item(&line.text)) {
                break;
            }
            if line.indent > indent {
                self.fail(i, "unexpected indentation");
            }
            let text = line.text.trim().to_owned();
            let Some((key, value)) = split_key(&text) else {
                self.fail(i, "expected `key: value`");
            };
            let key = unquote(key);
            if key == "<<" || value.starts_with('&') || value.starts_with('*') {
                self.fail(i, "anchors and merge keys are not supported here");
            }
            if entries.iter().any(|(k, _)| *k == key) {
                self.fail(i, "duplicate key");
            }
            self.pos = i + 1;
            let node = match value {
                "" => match self.next_significant() {
                    Some(j) if self.lines[j].indent > indent => {
                        let child = self.lines[j].indent;
                        self.block(child)
                    }
                    Some(j) if self.lines[j].indent == indent && is_item(&self.lines[j].text) => {
                        self.sequence(indent)
                    }
                    _ => Yaml::Scalar(String::new()),
                },
                "|" | "|-" | "|+" | ">" | ">-" => self.block_scalar(indent, value),
                v => self.scalar(i, v),
            };
            entries.push((key, node));
        }
        Yaml::Map(entries)
    }

    fn sequence(&mut self, indent: usize) -> Yaml {
        let mut items = Vec::new();
        while let Some(i) = self.next_significant() {
            let line = &self.lines[i];
            if line.indent != indent || !is_item(&line.text) {
                if line.indent > indent {
                    self.fail(i, "unexpected indentation");
                }
                break;
            }
            let rest = line.text.trim_start()[1..].trim_start().to_owned();
            if rest.is_empty() {
                self.pos = i + 1;
                let j = self.next_significant().expect("an item");
                let child = self.lines[j].indent;
                if child <= indent {
                    self.fail(j, "empty list item");
                }
                items.push(self.block(child));
            } else if !rest.starts_with(['"', '\'', '[', '{']) && split_key(&rest).is_some() {
                // `- key: value`: a mapping whose keys line up with this one.
                let column = line.text.len() - rest.len();
                self.lines[i].text = format!("{}{rest}", " ".repeat(column));
                self.lines[i].indent = column;
                items.push(self.mapping(column));
            } else {
                self.pos = i + 1;
                items.push(self.scalar(i, &rest));
            }
        }
        Yaml::List(items)
    }

    /// `|` and `>` blocks: raw lines more indented than the key (comments kept).
    fn block_scalar(&mut self, indent: usize, style: &str) -> Yaml {
        let mut body: Vec<&str> = Vec::new();
        let mut end = self.pos;
        while end < self.lines.len() {
            let l = &self.lines[end];
            if !l.raw.trim().is_empty() && l.indent <= indent {
                break;
            }
            body.push(&l.raw);
            end += 1;
        }
        while body.last().is_some_and(|l| l.trim().is_empty()) {
            body.pop();
        }
        let cut = body
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start().len())
            .min()
            .unwrap_or(0);
        let lines: Vec<&str> = body.iter().map(|l| l.get(cut..).unwrap_or("")).collect();
        let mut text = if style.starts_with('>') {
            lines.join(" ")
        } else {
            lines.join("\n")
        };
        if !style.ends_with('-') {
            text.push('\n');
        }
        self.pos = end;
        Yaml::Scalar(text)
    }

    fn scalar(&self, i: usize, value: &str) -> Yaml {
        if value.starts_with('{') {
            self.fail(i, "flow mappings are not supported here");
        }
        if let Some(inner) = value.strip_prefix('[') {
            let Some(inner) = inner.strip_suffix(']') else {
                self.fail(i, "flow lists must close on their line");
            };
            return Yaml::List(
                split_outside_quotes(inner, ',')
                    .into_iter()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Yaml::Scalar(unquote(s)))
                    .collect(),
            );
        }
        Yaml::Scalar(unquote(value))
    }
}

fn is_item(text: &str) -> bool {
    let t = text.trim_start();
    t == "-" || t.starts_with("- ")
}

/// Splits `s` at `sep` where it is outside single or double quotes.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quote, mut start, mut escaped) = (None, 0, false);
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some('"'), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, c) if c == sep => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
        escaped = false;
    }
    out.push(&s[start..]);
    out
}

/// `key: value` or `key:` (the colon outside quotes, followed by a blank or the end).
fn split_key(text: &str) -> Option<(&str, &str)> {
    let mut quote = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') if i == 0 => quote = Some(c),
            (None, ':') => {
                let after = &text[i + 1..];
                if after.is_empty() || after.starts_with(' ') {
                    return Some((text[..i].trim(), after.trim()));
                }
            }
            _ => {}
        }
    }
    None
}

/// Drops a `#` comment that starts the line or follows a blank, outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') if prev == ' ' || prev == '[' || prev == ',' || prev == ':' => {
                quote = Some(c)
            }
            (None, '#') if prev.is_whitespace() => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        let mut out = String::new();
        let mut chars = s[1..s.len() - 1].chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => {}
                }
            } else {
                out.push(c);
            }
        }
        out
    } else if s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'') {
        s[1..s.len() - 1].replace("''", "'")
    } else {
        s.to_owned()
    }
}

#[test]
fn yaml_subset_parser_reads_what_compose_uses() {
    let doc = parse_yaml(
        "sample",
        r#"
# a comment
name: demo   # trailing comment
services:
  web:
    image: "nginx:alpine"
    command: ["--listen", "0.0.0.0:9090"]
    entrypoint: mes-sim --flag
    ports:
      - "127.0.0.1:8081:8080"
      - 9901:9901
    environment:
      URL: http://mes-sim:9090
      TOKEN: ${T:-x#y}
    depends_on:
      db:
        condition: service_healthy
  db:
    volumes:
    - ./a.conf:/etc/a.conf:ro
configs:
  c:
    content: |
      scrape_configs:
        - job_name: m   # kept
          static_configs:
            - targets: ["a:1", 'b:2']

      tail: 1
"#,
    );
    assert_eq!(doc.get("name").and_then(Yaml::str), Some("demo"));
    let web = doc.get("services").unwrap().get("web").unwrap();
    assert_eq!(web.get("image").and_then(Yaml::str), Some("nginx:alpine"));
    assert_eq!(
        web.get("command").unwrap().words(),
        ["--listen", "0.0.0.0:9090"]
    );
    assert_eq!(
        web.get("entrypoint").unwrap().words(),
        ["mes-sim", "--flag"]
    );
    assert_eq!(container_ports(web), [8080, 9901]);
    let env = environment(web);
    assert_eq!(env["URL"], "http://mes-sim:9090");
    assert_eq!(env["TOKEN"], "${T:-x#y}");
    assert_eq!(
        web.get("depends_on")
            .and_then(|d| d.get("db"))
            .and_then(|d| d.get("condition"))
            .and_then(Yaml::str),
        Some("service_healthy")
    );
    let db = doc.get("services").unwrap().get("db").unwrap();
    assert_eq!(
        volumes(db),
        [("./a.conf".to_owned(), "/etc/a.conf".to_owned())]
    );
    let content = doc
        .get("configs")
        .and_then(|c| c.get("c"))
        .and_then(|c| c.get("content"))
        .and_then(Yaml::str)
        .unwrap();
    assert!(
        content.contains("# kept") && content.ends_with("tail: 1\n"),
        "{content}"
    );
    let prom = parse_yaml("content", content);
    let targets = prom.get("scrape_configs").unwrap().list()[0]
        .get("static_configs")
        .unwrap()
        .list()[0]
        .get("targets")
        .unwrap()
        .words();
    assert_eq!(targets, ["a:1", "b:2"]);
}

#[test]
#[should_panic(expected = "anchors")]
fn yaml_subset_parser_refuses_anchors() {
    parse_yaml("sample", "a: &x\n  b: 1\nc:\n  <<: *x\n");
}
