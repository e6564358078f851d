//! The config's tests: whole documents parsed through [`Config`] (defaults, the field path
//! every rejection names, overrides) and the size parser. How the gateway uses a config
//! is tested where it is used, not here.

use std::time::Duration;

use http::Method;

use super::*;

const MINIMAL: &str = r#"
upstream = "http://127.0.0.1:9090"
[[route]]
name = "order-list"
path = "/api/orders"
[route.cache]
query = ["status", "page=1", "size=50"]
"#;

fn err(text: &str) -> String {
    text.parse::<Config>().unwrap_err().to_string()
}

#[test]
fn represents_is_a_path_of_plain_segments() {
    let base = "upstream = \"http://127.0.0.1:9090\"\n[[route]]\nname = \"d\"\npath = \"/o/{id}\"\n[route.cache]\nfamilies = [\"o:{path.id}\"]\n[[route]]\nname = \"w\"\nmethods = [\"PATCH\"]\npath = \"/o/{id}/s\"\n[route.invalidate]\nfamilies = [\"o:{path.id}\"]\n";
    let c: Config = format!("{base}represents = \"/o/{{path.id}}\"\n")
        .parse()
        .unwrap();
    let w = c.routes.routes().iter().find(|r| r.name.as_str() == "w");
    let rule = w.unwrap().invalidate.clone().unwrap();
    let path = rule.represents.as_ref().unwrap();
    let value = |v: &'static str| move |_: crate::family::Source, _: &str| Some(v.to_owned());
    assert_eq!(path.render(&value("77")).as_deref(), Some("/o/77"));
    assert_eq!(path.render(&value("7?x=1")), None, "not a plain segment");
    assert_eq!(path.render(&value("")), None);
    for bad in ["o/{path.id}", "/o/{path.nope}", "/o//{path.id}"] {
        let e = err(&format!("{base}represents = \"{bad}\"\n"));
        assert!(
            e.contains("route[1] \"w\".invalidate.represents"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn refresh_on_write_defaults_off_and_is_bounded() {
    let off = |c: &Config| c.routes.routes()[1].invalidate.as_ref().unwrap().refresh;
    let base = "upstream = \"http://127.0.0.1:9090\"\n[[route]]\nname = \"l\"\npath = \"/o\"\n[route.cache]\nfamilies = [\"s:{query.s|all}\"]\nquery = [\"s\"]\n[[route]]\nname = \"w\"\nmethods = [\"POST\"]\npath = \"/o\"\n[route.invalidate]\nfamilies = [\"s:all\"]\n";
    let c: Config = base.parse().unwrap();
    assert_eq!(off(&c), Duration::ZERO);
    let c: Config = format!("{base}refresh = \"250ms\"\n").parse().unwrap();
    assert_eq!(off(&c), Duration::from_millis(250));
    let e = err(&format!("{base}refresh = \"soon\"\n"));
    assert!(e.contains("route[1] \"w\".invalidate.refresh"), "{e}");
    let e = err(&format!("{base}refresh = \"1m\"\n"));
    assert!(
        e.contains("route[1] \"w\".invalidate.refresh") && e.contains("10s"),
        "{e}"
    );
}

#[test]
fn minimal_config_gets_defaults() {
    let c: Config = MINIMAL.parse().unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert!(c.redis.is_none());
    let r = &c.routes.routes()[0];
    let p = r.cache.as_ref().unwrap();
    assert_eq!(p.ttl_l1, Duration::from_secs(5));
    assert_eq!(p.max_body, 1 << 20);
    assert_eq!(p.query[0].name, "page");
    assert_eq!(p.query[0].default.as_deref(), Some("1"));
    assert_eq!(r.methods, vec![Method::GET, Method::HEAD]);
}

#[test]
fn typed_path_parameters_are_checked_with_their_field_path() {
    let detail = "upstream = \"http://127.0.0.1:9090\"\n[[route]]\nname = \"d\"\npath = \"/o/{id:u64}\"\n[route.cache]\nfamilies = [\"order:{path.id}\"]\n";
    let c: Config = detail.parse().unwrap();
    let params: Vec<_> = c.routes.routes()[0].path.typed_params().collect();
    assert_eq!(params, [("id", route::ParamType::U64)]);
    let e = err(&detail.replace("{id:u64}", "{id:float}"));
    assert!(e.starts_with("route[0] \"d\".path"), "{e}");
    assert!(
        e.contains("unknown type \"float\"") && e.contains("u64"),
        "{e}"
    );
    let e = err(&detail.replace("{path.id}", "{path.id|x}"));
    assert!(e.starts_with("route[0] \"d\".cache.families[0]"), "{e}");
    assert!(e.contains("takes no default"), "{e}");
    let write = "upstream = \"http://127.0.0.1:9090\"\n[[route]]\nname = \"d\"\npath = \"/o/{id}\"\n[route.cache]\nfamilies = [\"order:{path.id}\"]\n[[route]]\nname = \"w\"\nmethods = [\"PATCH\"]\npath = \"/o/{id:u64}\"\n[route.invalidate]\nfamilies = [\"order:{path.id|0}\"]\n";
    let e = err(write);
    assert!(
        e.starts_with("route[1] \"w\".invalidate.families[0]"),
        "{e}"
    );
    let e = err(&write.replace("{path.id|0}", "{path.nr}"));
    assert!(e.contains("the path has no {nr}"), "{e}");
}

#[test]
fn unknown_field_names_its_path() {
    let e = err(&MINIMAL.replace("query =", "ttl_l3 = \"1s\"\nquery ="));
    assert!(e.starts_with("route[0] \"order-list\".cache.ttl_l3"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn bad_duration_names_its_path() {
    let e = err(&format!("{MINIMAL}ttl_l1 = \"5 parsecs\"\n"));
    assert!(
        e.starts_with("route[0] \"order-list\".cache.ttl_l1: bad duration"),
        "{e}"
    );
}

#[test]
fn bad_template_names_its_path() {
    let e = err(&MINIMAL.replace("/api/orders", "/api/{id"));
    assert!(e.starts_with("route[0] \"order-list\".path:"), "{e}");
}

#[test]
fn wrong_type_names_its_path() {
    let e = err(&format!("{MINIMAL}statuses = \"200\"\n"));
    assert!(
        e.starts_with("route[0] \"order-list\".cache.statuses"),
        "{e}"
    );
}

#[test]
fn contradictions_are_rejected() {
    let cases = [
        (
            MINIMAL.replace("path =", "methods = [\"GET\", \"POST\"]\npath ="),
            "route[0] \"order-list\".methods",
        ),
        (
            format!("{MINIMAL}ttl_l1 = \"0s\"\nttl_l2 = \"0s\"\n"),
            "route[0] \"order-list\".cache.ttl_l1",
        ),
        (
            format!("{MINIMAL}vary = [\"Authorization\"]\n"),
            "route[0] \"order-list\".cache.vary[0]",
        ),
        (
            format!("{MINIMAL}statuses = [500]\n"),
            "route[0] \"order-list\".cache.statuses[0]",
        ),
        (
            MINIMAL.replace("\"size=50\"", "\"size=50\", \"page\""),
            "route[0] \"order-list\".cache.query[3]",
        ),
        (
            format!("{MINIMAL}[timeouts]\ntotal = \"1s\"\n"),
            "timeouts.total",
        ),
    ];
    for (text, path) in cases {
        let e = err(&text);
        assert!(e.starts_with(path), "want {path}, got {e}");
    }
}

#[test]
fn duplicate_routes_are_rejected() {
    let dup = format!("{MINIMAL}[[route]]\nname = \"again\"\npath = \"/api/orders\"\n");
    assert!(
        err(&dup).starts_with("route[1] \"again\".path"),
        "{}",
        err(&dup)
    );
    let same_name = format!("{MINIMAL}[[route]]\nname = \"order-list\"\npath = \"/x\"\n");
    assert!(err(&same_name).starts_with("route[1] \"order-list\".name"));
}

#[test]
fn bad_upstream_and_addresses() {
    assert!(err(&MINIMAL.replace("http://127.0.0.1:9090", "https://mes")).starts_with("upstream"));
    assert!(
        err(&MINIMAL.replace("http://127.0.0.1:9090", "http://mes/api")).starts_with("upstream")
    );
    assert!(err(&format!("listen = \"nope\"\n{MINIMAL}")).starts_with("listen: bad address"));
    let e = err(&format!("{MINIMAL}[redis]\nurl = \"ftp://x\"\n"));
    assert!(
        e.starts_with("route[0] \"order-list\".cache.redis") || e.starts_with("redis.url"),
        "{e}"
    );
}

#[test]
fn the_bus_deadline_must_outlast_a_heartbeat() {
    let redis = |extra: &str| format!("{MINIMAL}[redis]\nurl = \"redis://127.0.0.1:1\"\n{extra}");
    let e = err(&redis("heartbeat = \"500ms\"\n"));
    assert!(
        e.starts_with("redis.bus_deadline: must be more than"),
        "{e}"
    );
    let e = err(&redis("heartbeat = \"0s\"\n"));
    assert!(e.starts_with("redis.heartbeat"), "{e}");
    assert!(err(&redis("cut_off_ttl = \"soon\"\n")).starts_with("redis.cut_off_ttl"));
}

#[test]
fn sizes_parse_with_units() {
    let s = |t: &str| parse_size("x", &RawSize::Text(t.into()));
    assert_eq!(s("1MiB").unwrap(), 1 << 20);
    assert_eq!(s("2 KB").unwrap(), 2000);
    assert_eq!(s("17").unwrap(), 17);
    assert!(s("1 parsec").is_err());
    assert!(s("MiB").is_err());
}

#[test]
fn overrides_win_over_the_file() {
    let o = Overrides {
        listen: Some("127.0.0.1:1".into()),
        redis_url: Some("redis://127.0.0.1:2".into()),
        ..Overrides::default()
    };
    let c = Config::from_str_with(MINIMAL, o).unwrap();
    assert_eq!(c.listen.port(), 1);
    assert_eq!(c.redis.unwrap().url, "redis://127.0.0.1:2");
    let with_redis = format!("{MINIMAL}[redis]\nurl = \"redis://127.0.0.1:3\"\n");
    let off = Overrides {
        redis_url: Some("off".into()),
        ..Overrides::default()
    };
    assert!(
        Config::from_str_with(&with_redis, off)
            .unwrap()
            .redis
            .is_none()
    );
}

#[test]
fn connection_timeouts_and_cap_default_and_a_partial_timeouts_table_keeps_the_rest() {
    let c: Config = MINIMAL.parse().unwrap();
    assert_eq!(c.timeouts.client_header, Duration::from_secs(10));
    assert_eq!(c.timeouts.client_idle, Duration::from_secs(60));
    assert_eq!(c.timeouts.client_body, Duration::from_secs(30));
    assert_eq!(c.limits.max_connections, None);
    // A `[timeouts]` table naming one field used to default `total` to the string "total".
    let c: Config =
        format!("{MINIMAL}[timeouts]\nclient_idle = \"5s\"\n[limits]\nmax_connections = 100\n")
            .parse()
            .unwrap();
    assert_eq!(c.timeouts.total, Duration::from_secs(30));
    assert_eq!(c.timeouts.client_idle, Duration::from_secs(5));
    assert_eq!(c.limits.max_connections, Some(100));
}

#[test]
fn what_cannot_run_names_its_path() {
    let e = err(&MINIMAL.replace("query =", "ttl_l2 = \"367d\"\nquery ="));
    assert!(
        e.starts_with("route[0] \"order-list\".cache.ttl_l2: "),
        "{e}"
    );
    let c: Config = MINIMAL
        .replace("query =", "ttl_l2 = \"366d\"\nquery =")
        .parse()
        .unwrap();
    assert_eq!(
        c.routes.routes()[0].cache.as_ref().unwrap().ttl_l2,
        super::parse::MAX_DURATION
    );
    let e = err(&format!(
        "{MINIMAL}[[route]]\nname = \"w\"\nmethods = [\"POST\", \"PACTH\"]\npath = \"/o\"\n"
    ));
    assert!(e.starts_with("route[1] \"w\".methods[1]: "), "{e}");
    let redis = "[redis]\nurl = \"redis://127.0.0.1:6379\"\n";
    let e = err(&format!("{MINIMAL}{redis}op_timeout = \"3s\"\n"));
    assert!(
        e.starts_with("redis.op_timeout: ") && e.contains("redis.breaker_cooldown"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}{redis}op_timeout = \"1s\"\nbreaker_cooldown = \"5s\"\n[timeouts]\nresponse_header = \"500ms\"\ntotal = \"1s\"\n"
    ));
    assert!(
        e.starts_with("redis.op_timeout: ") && e.contains("timeouts.response_header"),
        "{e}"
    );
}

#[test]
fn an_admin_listener_open_to_other_hosts_without_a_token_is_warned_of() {
    let with = |admin: &str| -> Vec<String> {
        format!("{MINIMAL}[admin]\n{admin}")
            .parse::<Config>()
            .unwrap()
            .warnings()
    };
    assert!(with("").is_empty(), "loopback by default");
    let w = with("listen = \"0.0.0.0:9901\"\n");
    assert_eq!(w.len(), 1);
    assert!(w[0].starts_with("admin.listen: 0.0.0.0:9901"), "{w:?}");
    assert!(with("listen = \"0.0.0.0:9901\"\ntoken = \"t\"\n").is_empty());
    assert!(with("listen = \"[::1]:9901\"\n").is_empty());
}

#[test]
fn the_summary_names_the_redis_mode() {
    let with = |body: &str| -> Config { format!("{MINIMAL}[redis]\n{body}\n").parse().unwrap() };
    let first = |c: Config| c.describe().lines().next().unwrap().to_owned();
    let one = first(with("url = \"redis://127.0.0.1:6379\""));
    assert!(one.contains("  redis redis://127.0.0.1:6379  "), "{one}");
    let cluster = first(with(
        "mode = \"cluster\"\nurl = \"redis://127.0.0.1:7000,redis://127.0.0.1:7001\"",
    ));
    assert!(
        cluster.contains("  redis cluster redis://127.0.0.1:7000,redis://127.0.0.1:7001  "),
        "{cluster}"
    );
    let sentinel = first(with(
        "mode = \"sentinel\"\nurl = \"redis://127.0.0.1:26379\"\nmaster_name = \"m\"",
    ));
    assert!(
        sentinel.contains("  redis sentinel master=m at redis://127.0.0.1:26379  "),
        "{sentinel}"
    );
}

#[test]
fn redis_sentinel_and_cluster_modes_take_a_list_of_urls() {
    use crate::config::RedisTopology;
    let with = |body: &str| format!("{MINIMAL}[redis]\n{body}\n");
    let c: Config = with(
        "mode = \"sentinel\"\nurl = \"redis://127.0.0.1:26379, redis://127.0.0.1:26380\"\nmaster_name = \"mesgate\"",
    )
    .parse()
    .unwrap();
    assert_eq!(
        c.redis.unwrap().topology,
        RedisTopology::Sentinel {
            sentinels: vec![
                "redis://127.0.0.1:26379".into(),
                "redis://127.0.0.1:26380".into()
            ],
            master: "mesgate".into(),
        }
    );
    let e = err(&with(
        "mode = \"sentinel\"\nurl = \"redis://127.0.0.1:26379\"",
    ));
    assert!(
        e.contains("redis.master_name") && e.contains("MESGATE_REDIS_MASTER"),
        "{e}"
    );
    let e = err(&with(
        "mode = \"sentinel\"\nurl = \"redis://127.0.0.1:26379,\"\nmaster_name = \"m\"",
    ));
    assert!(e.contains("redis.url") && e.contains("empty entry"), "{e}");
    let e = err(&with(
        "url = \"redis://127.0.0.1:6379\"\nmaster_name = \"m\"",
    ));
    assert!(
        e.contains("redis.master_name") && e.contains("sentinel"),
        "{e}"
    );
    let c: Config =
        with("mode = \"cluster\"\nurl = \"redis://127.0.0.1:7000,redis://127.0.0.1:7001\"")
            .parse()
            .unwrap();
    assert_eq!(
        c.redis.unwrap().topology,
        RedisTopology::Cluster {
            nodes: vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ],
        }
    );
    let e = err(&with(
        "mode = \"cluster\"\nurl = \"redis://127.0.0.1:7000,,redis://127.0.0.1:7001\"",
    ));
    assert!(e.contains("redis.url") && e.contains("seed nodes"), "{e}");
    let e = err(&with(
        "mode = \"cluster\"\nurl = \"redis://127.0.0.1:7000,http://x\"",
    ));
    assert!(e.contains("redis.url") && e.contains("http://x"), "{e}");
    let e = err(&with(
        "mode = \"cluster\"\nurl = \"redis://127.0.0.1:7000\"\nmaster_name = \"m\"",
    ));
    assert!(e.contains("redis.master_name"), "{e}");
    let e = err(&with(
        "mode = \"replica\"\nurl = \"redis://127.0.0.1:6379\"",
    ));
    assert!(e.contains("redis.mode") && e.contains("\"replica\""), "{e}");
    let c: Config = with("url = \"redis://127.0.0.1:6379\"").parse().unwrap();
    assert_eq!(c.redis.unwrap().topology, RedisTopology::Standalone);
}

#[test]
fn the_environment_puts_sentinel_mode_over_the_file() {
    use crate::config::RedisTopology;
    let o = Overrides {
        redis_url: Some("redis://127.0.0.1:26379,redis://127.0.0.1:26380".into()),
        redis_mode: Some("sentinel".into()),
        redis_master: Some("prod".into()),
        ..Overrides::default()
    };
    let c = Config::from_str_with(MINIMAL, o).unwrap();
    assert!(matches!(
        c.redis.unwrap().topology,
        RedisTopology::Sentinel { sentinels, master } if sentinels.len() == 2 && master == "prod"
    ));
}

#[test]
fn a_compute_table_is_validated_in_the_document_with_its_field_path() {
    let route = "upstream = \"http://127.0.0.1:9090\"\n[[route]]\nname = \"p\"\nmethods = [\"POST\"]\npath = \"/p\"\n[route.compute]\n";
    let ok: Config = format!("{route}key = [\"model_hash\", \"quantity\"]\n")
        .parse()
        .unwrap();
    let rule = ok.routes.routes()[0].compute.clone().unwrap();
    assert_eq!(rule.ttl, Duration::from_secs(24 * 3600));
    assert_eq!(rule.lease, Duration::from_secs(15));
    assert!(
        ok.describe().contains("compute key=[model_hash,quantity]"),
        "{}",
        ok.describe()
    );
    for (extra, want) in [
        ("key = []\n", "route[0] \"p\".compute.key: must name"),
        ("key = [\"a b\"]\n", "route[0] \"p\".compute.key[0]"),
        (
            "key = [\"a\"]\nttl = \"forever\"\n",
            "route[0] \"p\".compute.ttl",
        ),
        ("key = [\"a\"]\nkeys = 1\n", "route[0] \"p\".compute"),
    ] {
        let e = err(&format!("{route}{extra}"));
        assert!(e.contains(want), "{extra}: {e}");
    }
    let get = route.replace("[\"POST\"]", "[\"GET\"]");
    let e = err(&format!("{get}key = [\"a\"]\n"));
    assert!(
        e.contains("route[0] \"p\".compute: a compute route serves POST only"),
        "{e}"
    );
}

#[test]
fn a_route_is_named_by_its_position_and_its_name_in_path_and_message() {
    let text = format!(
        "{MINIMAL}[[route]]\nname = \"status-change\"\nmethods = [\"PATCH\"]\npath = \"/o/{{id}}\"\n[route.invalidate]\nfamilies = [\"status:all\"]\nrefresh = \"soon\"\n[[route]]\nname = \"again\"\npath = \"/api/orders\"\n"
    );
    let e = err(&text);
    assert!(
        e.starts_with("route[1] \"status-change\".invalidate.refresh: bad duration"),
        "{e}"
    );
    // A type error (before validation) is named the same way.
    let e = err(&text.replace("refresh = \"soon\"", "refresh = 250"));
    assert!(
        e.starts_with("route[1] \"status-change\".invalidate.refresh: "),
        "{e}"
    );
    // The route it clashes with is named in the message too.
    let e = err(&text.replace("refresh = \"soon\"", "refresh = \"250ms\""));
    assert_eq!(
        e,
        "route[2] \"again\".path: GET /api/orders is already handled by route[0] \"order-list\""
    );
}

#[test]
fn a_toml_syntax_error_names_its_line_and_column() {
    let e = err("upstream = \"http://127.0.0.1:9090\"\n\n[[route]\nname = \"x\"\n");
    assert!(e.starts_with("line 3, column 9: "), "{e}");
    assert!(!e.contains('\n'), "one line, no source excerpt: {e}");
    let e = err("upstream = \"http://127.0.0.1:9090\"\nlisten = 127.0.0.1:8080\n");
    assert!(e.starts_with("line 2, column "), "{e}");
}

#[test]
fn ui_is_off_by_default_and_its_statuses_are_plain_names() {
    let c: Config = MINIMAL.parse().unwrap();
    assert!(!c.ui.enabled);
    assert_eq!(c.ui.statuses[0], "MANUFACTURING_APPROVED");
    let on: Config = format!("{MINIMAL}[ui]\nenabled = true\nstatuses = [\"SHIPPED\"]\n")
        .parse()
        .unwrap();
    assert!(on.ui.enabled);
    assert_eq!(on.ui.statuses, ["SHIPPED"]);
    for (bad, at) in [
        (
            "statuses = [\"A\", \"x y\"]",
            "ui.statuses[1]: \"x y\" is not a status name",
        ),
        (
            "statuses = [\"A\", \"A\"]",
            "ui.statuses[1]: A is named twice",
        ),
        (
            "enabled = true\nstatuses = []",
            "ui.statuses: must name at least one",
        ),
        ("open = true", "unknown field `open`"),
    ] {
        let e = err(&format!("{MINIMAL}[ui]\n{bad}\n"));
        assert!(e.contains(at), "{bad}: {e}");
    }
}
