//! The shipped config files load, and the binary reports bad ones with exit code 2 and
//! the path of the offending field.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

use mesgate::config::{Config, Overrides};

const BIN: &str = env!("CARGO_BIN_EXE_mesgate");

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// A config file in the temp dir, removed on drop.
struct TempConfig {
    path: PathBuf,
}

impl TempConfig {
    fn new(name: &str, text: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "mesgate-test-{}-{}-{name}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).expect("write temp config");
        Self { path }
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs the binary with `args`, without any `MESGATE_*` variable of the caller's
/// environment leaking in.
fn mesgate(args: &[&std::ffi::OsStr]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("RUST_LOG", "error");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MESGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run the mesgate binary")
}

fn check_config(path: &Path) -> Output {
    mesgate(&["check-config".as_ref(), path.as_os_str()])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A valid config with a cached route, a forward route, and a `[redis]` table.
const VALID: &str = r#"
upstream = "http://127.0.0.1:9090"

[[route]]
name = "order-list"
path = "/api/orders"
[route.cache]
query = ["status", "page=1", "size=50"]
ttl_l1 = "5s"

[[route]]
name = "order-create"
methods = ["POST"]
path = "/api/orders"
"#;

#[test]
fn every_shipped_config_loads() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(config_dir()).expect("config/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = Config::load(&path, Overrides::default())
                .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
            assert!(
                !config.routes.routes().is_empty(),
                "{} has no routes",
                path.display()
            );
            seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    seen.sort();
    assert!(
        seen.iter().any(|n| n == "mesgate.toml") && seen.iter().any(|n| n == "demo.toml"),
        "found {seen:?}"
    );
}

#[test]
fn check_config_accepts_the_shipped_config_and_lists_its_routes() {
    let path = config_dir().join("mesgate.toml");
    let out = check_config(&path);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(stdout.contains("ok"), "{stdout}");
    let config = Config::load(&path, Overrides::default()).unwrap();
    for route in config.routes.routes() {
        assert!(
            stdout.contains(&*route.name),
            "route {} missing from:\n{stdout}",
            route.name
        );
    }
    for name in [
        "order-list",
        "status-counts",
        "order-detail",
        "status-change",
        "order-create",
        "price-calculation",
    ] {
        assert!(stdout.contains(name), "{name} missing from:\n{stdout}");
    }
}

#[test]
fn check_config_accepts_a_minimal_valid_file() {
    let file = TempConfig::new("valid", VALID);
    let out = check_config(&file.path);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(stdout.contains("order-list") && stdout.contains("order-create"));
}

/// Asserts that `check-config` rejects `config` with exit code 2 and names `field`.
fn assert_rejected(name: &str, config: &str, field: &str) {
    let file = TempConfig::new(name, config);
    let out = check_config(&file.path);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{name}: stdout {} stderr {stderr}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains(&format!("{field}:")),
        "{name}: want {field:?} in stderr:\n{stderr}"
    );
    assert!(out.stdout.is_empty(), "{name}: {}", text(&out.stdout));
    // The library names the same field first.
    let e = config.parse::<Config>().unwrap_err().to_string();
    assert!(e.starts_with(field), "{name}: library says {e}");
}

#[test]
fn unknown_field_names_its_path() {
    let config = VALID.replace("ttl_l1 = \"5s\"", "ttl_l1 = \"5s\"\nttl_l3 = \"1s\"");
    assert_rejected(
        "unknown-field",
        &config,
        "route[0] \"order-list\".cache.ttl_l3",
    );
}

#[test]
fn unknown_top_level_field_names_its_path() {
    let config = format!("listne = \"127.0.0.1:1\"\n{VALID}");
    assert_rejected("unknown-top-field", &config, "listne");
}

#[test]
fn bad_template_names_its_path() {
    let config = VALID.replacen("path = \"/api/orders\"", "path = \"/api/{id\"", 1);
    assert_rejected("bad-template", &config, "route[0] \"order-list\".path");
}

#[test]
fn bad_duration_names_its_path() {
    let config = VALID.replace("ttl_l1 = \"5s\"", "ttl_l1 = \"5 parsecs\"");
    assert_rejected(
        "bad-duration",
        &config,
        "route[0] \"order-list\".cache.ttl_l1",
    );
}

#[test]
fn wrong_type_names_its_path() {
    let config = VALID.replace("ttl_l1 = \"5s\"", "ttl_l1 = \"5s\"\nstatuses = \"200\"");
    assert_rejected(
        "wrong-type",
        &config,
        "route[0] \"order-list\".cache.statuses",
    );
}

#[test]
fn wrong_type_in_a_later_route_names_its_index() {
    let config = VALID.replace("methods = [\"POST\"]", "methods = \"POST\"");
    assert_rejected(
        "wrong-type-later",
        &config,
        "route[1] \"order-create\".methods",
    );
}

#[test]
fn write_method_on_a_cached_route_is_a_contradiction() {
    let config = VALID.replacen(
        "path = \"/api/orders\"",
        "methods = [\"GET\", \"POST\"]\npath = \"/api/orders\"",
        1,
    );
    assert_rejected("post-cached", &config, "route[0] \"order-list\".methods");
}

#[test]
fn bad_upstream_url_names_upstream() {
    for (name, url) in [
        ("upstream-tls", "https://mes.local"),
        ("upstream-path", "http://mes.local/api"),
        ("upstream-garbage", "not a url"),
    ] {
        let config = VALID.replace("http://127.0.0.1:9090", url);
        assert_rejected(name, &config, "upstream");
    }
}

#[test]
fn duplicate_route_names_the_second() {
    let same_path = format!("{VALID}\n[[route]]\nname = \"again\"\npath = \"/api/orders\"\n");
    assert_rejected("dup-path", &same_path, "route[2] \"again\".path");
    let same_name = format!("{VALID}\n[[route]]\nname = \"order-list\"\npath = \"/x\"\n");
    assert_rejected("dup-name", &same_name, "route[2] \"order-list\".name");
}

#[test]
fn broken_toml_exits_2_naming_the_file_line_and_column() {
    let file = TempConfig::new("broken", "upstream = \"http://127.0.0.1:9090\"\n[[route]\n");
    for out in [
        check_config(&file.path),
        mesgate(&["--config".as_ref(), file.path.as_os_str()]),
    ] {
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let want = format!("mesgate: config error: {}:2:9: ", file.path.display());
        assert!(stderr.starts_with(&want), "want {want:?}, got:\n{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn check_config_prints_the_route_table_in_the_configs_own_spelling() {
    let config = VALID.replace(
        "ttl_l1 = \"5s\"",
        "ttl_l1 = \"5s\"\nstale_if_error = \"90s\"\nunknown_query = \"strip\"\ncredentials = \"per_credential\"",
    );
    let file = TempConfig::new("spelling", &config);
    let out = check_config(&file.path);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for want in [
        "l1=5s",
        "stale_if_error=1m 30s",
        "unknown=strip",
        "credentials=per_credential",
    ] {
        assert!(stdout.contains(want), "want {want:?} in:\n{stdout}");
    }
    let plain = TempConfig::new("spelling-default", VALID);
    let stdout = text(&check_config(&plain.path).stdout);
    assert!(
        stdout.contains("unknown=bypass") && stdout.contains("credentials=bypass"),
        "{stdout}"
    );
}

#[test]
fn options_that_mean_nothing_for_a_subcommand_are_refused() {
    let file = TempConfig::new("valid", VALID);
    let out = mesgate(&[
        "--config".as_ref(),
        file.path.as_os_str(),
        "check-config".as_ref(),
        file.path.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot be used"),
        "{}",
        text(&out.stderr)
    );
    for sub in ["check-config", "demo"] {
        let help = text(&mesgate(&[sub.as_ref(), "--help".as_ref()]).stdout);
        assert!(!help.contains("--config"), "{sub} offers --config:\n{help}");
    }
    // `run` takes it, as the bare command does.
    let help = text(&mesgate(&["run".as_ref(), "--help".as_ref()]).stdout);
    assert!(help.contains("--config"), "{help}");
}

#[test]
fn missing_config_file_exits_2_and_names_it() {
    let missing = std::env::temp_dir().join(format!(
        "mesgate-test-{}-does-not-exist.toml",
        std::process::id()
    ));
    assert!(!missing.exists());
    let out = mesgate(&["--config".as_ref(), missing.as_os_str()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(&*missing.to_string_lossy()),
        "the message names the file: {stderr}"
    );

    let out = check_config(&missing);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(&*missing.to_string_lossy()), "{stderr}");
}

#[test]
fn index_preload_concurrency_is_bounded() {
    let shipped = std::fs::read_to_string(config_dir().join("mesgate.toml")).unwrap();
    for bad in ["0", "17"] {
        let config = shipped.replace(
            "[route.index]\n",
            &format!("[route.index]\npreload_concurrency = {bad}\n"),
        );
        assert_rejected(
            "preload-concurrency",
            &config,
            "route[0] \"order-list\".index.preload_concurrency",
        );
    }
}

#[test]
fn a_write_that_changes_an_indexed_list_must_name_the_index() {
    // Without `index`, the status change's answers would not move the index, and it would
    // keep listing a moved order under its old status (seen in a demo config that had an
    // index added to its list route and not to its writes).
    let shipped = std::fs::read_to_string(config_dir().join("mesgate.toml")).unwrap();
    let link = "\nindex = \"order-list\"\n";
    assert_eq!(
        shipped.matches(link).count(),
        2,
        "the two writes name the index"
    );
    // The first is the status change's.
    let unlinked = shipped.replacen(link, "\n", 1);
    assert_rejected(
        "write-without-index",
        &unlinked,
        "route[3] \"status-change\".invalidate.index",
    );
    let e = unlinked.parse::<Config>().unwrap_err().to_string();
    assert!(
        e.contains("missing: it ends family group \"status\", which route \"order-list\""),
        "{e}"
    );
}

#[test]
fn check_config_rejects_what_cannot_run_and_warns_of_an_open_admin() {
    // Each passed check-config before, then panicked at start (a duration that overflows
    // the clock), never matched (a misspelt method), or defeated the breaker.
    let redis = "[redis]\nurl = \"redis://127.0.0.1:6379\"\n";
    let cases = [
        ("[timeouts]\ntotal = \"100000000000y\"\n", "timeouts.total"),
        (
            "[timeouts]\nclient_idle = \"5000000000y\"\n",
            "timeouts.client_idle",
        ),
        (
            "[[route]]\nname = \"w\"\nmethods = [\"PACTH\"]\npath = \"/api/x\"\n",
            "route[2] \"w\".methods[0]",
        ),
        (
            "[[route]]\nname = \"c\"\npath = \"/api/c\"\n[route.cache]\nttl_l2 = \"1000y\"\n",
            "route[2] \"c\".cache.ttl_l2",
        ),
        (
            &format!("{redis}op_timeout = \"5s\"\nbreaker_cooldown = \"2s\"\n"),
            "redis.op_timeout",
        ),
        (
            &format!("{redis}op_timeout = \"20s\"\nbreaker_cooldown = \"1m\"\n"),
            "redis.op_timeout",
        ),
        ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
        (
            "[limits]\nmax_connections = 10\n[events]\nmax_subscribers = 10\n",
            "events.max_subscribers",
        ),
        ("[events]\nmax_subscribers = 0\n", "events.max_subscribers"),
    ];
    for (extra, field) in cases {
        let file = TempConfig::new("cannot-run", &format!("{VALID}{extra}"));
        let out = check_config(&file.path);
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{extra}: {}{stderr}",
            text(&out.stdout)
        );
        assert!(stderr.contains(&format!("{field}: ")), "{extra}: {stderr}");
    }
    // An admin listener other hosts can reach, with no token: allowed, but said.
    let open = "[admin]\nlisten = \"0.0.0.0:9901\"\n";
    let file = TempConfig::new("open-admin", &format!("{VALID}{open}"));
    let out = check_config(&file.path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: admin.listen: 0.0.0.0:9901") && stderr.contains("admin.token"),
        "{stderr}"
    );
    let closed = format!("{VALID}[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"s3cret\"\n");
    let file = TempConfig::new("closed-admin", &closed);
    let out = check_config(&file.path);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_operations_setting_names_its_path() {
    let config = format!("{VALID}\n[operations]\nclaim_idle = \"0s\"\n");
    assert_rejected("operations-claim-idle", &config, "operations.claim_idle");
    let config = format!("{VALID}\n[operations]\nkeep = \"forever\"\n");
    assert_rejected("operations-keep", &config, "operations.keep");
}
