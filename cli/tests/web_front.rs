//! The web front (`xstore serve-web`) over plain HTTP on its Unix socket, as a reverse proxy
//! (or an attacker with a hand-made request) talks to it: logins and their limits, what a
//! customer may see and take, downloads that equal the backup, traversal in every encoding,
//! another account's hosts and snapshot ids, hostile names, 100 downloads at once.
#![allow(clippy::unwrap_used)]

mod common;
mod webfront;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::ok;
use webfront::{fleet, login, request, serve_unix, snapshots_of, tree, try_login, Fleet, HOSTILE};

/// `/{kind}/web1/{snapshot}/<web1's source path>/{rel}`.
fn url(f: &Fleet, kind: &str, snapshot: &str, rel: &str) -> String {
    let base = f.web1.to_str().unwrap().trim_start_matches('/');
    let rel = if rel.is_empty() {
        String::new()
    } else {
        format!("/{rel}")
    };
    format!("/{kind}/web1/{snapshot}/{base}{rel}")
}

#[test]
fn a_customer_browses_downloads_and_gets_exactly_the_backup() {
    let f = fleet(3 << 20);
    let server = serve_unix(&f);
    let alice = login(&server.socket(), "alice");

    // The hosts page: web1 with its freshness, db1 nowhere.
    let hosts = alice.get("/hosts").text();
    assert!(hosts.contains("href=\"/host/web1\""), "{hosts}");
    assert!(!hosts.contains("db1"), "{hosts}");
    // web1's snapshots under their tier names.
    let host = alice.get("/host/web1").text();
    for position in ["daily.1", "daily.0", "hourly.0"] {
        assert!(
            host.contains(&format!(">{position}<")),
            "{position}: {host}"
        );
    }
    // daily.1 is the first backup: its index.html is version 0, through page and download.
    let page = alice.get(&url(&f, "browse", "daily.1", "var/www"));
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains(">index.html<"), "{}", page.text());
    let file_page = alice
        .get(&url(&f, "browse", "daily.1", "var/www/index.html"))
        .text();
    assert!(file_page.contains("Versions"), "{file_page}");
    assert_eq!(file_page.matches("changed").count(), 3, "{file_page}");
    let got = alice.get(&url(&f, "download", "daily.1", "var/www/index.html"));
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), f.index_versions[0]);
    assert_eq!(
        got.header("content-disposition"),
        Some("attachment; filename=\"index.html\"; filename*=UTF-8''index.html")
    );
    assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    let newest = alice.get(&url(&f, "download", "hourly.0", "var/www/index.html"));
    assert_eq!(newest.text(), f.index_versions[2]);
    // The same snapshot by id prefix and by stable name.
    let (stable, id) = snapshots_of(&f.repo, "web1").remove(0);
    let by_id = alice.get(&url(&f, "download", &id[..12], "var/www/index.html"));
    assert_eq!(by_id.text(), f.index_versions[0], "{}", by_id.status);
    // The stable name as the host page links it (the short id is added to names of
    // snapshots that started in the same second); the oldest is listed last.
    let marker = "class=\"stable\" href=\"/browse/web1/";
    let oldest = host.rsplit(marker).next().unwrap();
    let oldest = &oldest[..oldest.find('/').unwrap()];
    assert!(oldest.starts_with(&stable), "{oldest} {stable}");
    let by_name = alice.get(&url(&f, "download", oldest, "var/www/index.html"));
    assert_eq!(by_name.status, 200);
    assert_eq!(by_name.text(), f.index_versions[0]);

    // Ranges of the big file: a middle, a suffix, past the end.
    let big = webfront::pattern(3 << 20, 7);
    let big_url = url(&f, "download", "hourly.0", "var/www/big.bin");
    let part = alice.get_with(&big_url, &[("Range", "bytes=1000000-1999999")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, big[1_000_000..2_000_000]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 1000000-1999999/{}", big.len()).as_str())
    );
    let tail = alice.get_with(&big_url, &[("Range", "bytes=-10")]);
    assert_eq!(tail.body, big[big.len() - 10..]);
    let past = alice.get_with(&big_url, &[("Range", "bytes=99999999-")]);
    assert_eq!(past.status, 416);
    // HEAD: the headers of the download, no body, nothing audited.
    let head = request(
        &alice.socket,
        "HEAD",
        &big_url,
        &[("Cookie", &alice.cookie)],
        b"",
    );
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(big.len().to_string().as_str())
    );
    assert!(head.body.is_empty());
    assert_eq!(alice.get(&big_url).body, big);

    // var/www as .tar.gz and .zip unpacks to what restore writes.
    let restored = f.path("restored");
    ok(
        &f.repo,
        &[
            "restore",
            &id[..12],
            restored.to_str().unwrap(),
            "--path",
            &format!("{}/var/www", f.web1.display()),
        ],
    );
    let want = tree(&restored.join("www"));
    for (format, unpack) in [
        ("tar.gz", vec!["tar", "xzf"]),
        // -^: keep control characters in names (unzip's default strips them).
        ("zip", vec!["unzip", "-q", "-^"]),
    ] {
        let archive = alice.get(&format!(
            "{}?format={format}",
            url(&f, "download", &id[..12], "var/www")
        ));
        assert_eq!(archive.status, 200);
        assert_eq!(
            archive.header("content-disposition"),
            Some(
                format!("attachment; filename=\"www.{format}\"; filename*=UTF-8''www.{format}")
                    .as_str()
            )
        );
        let out = f.path(&format!("unpacked-{format}"));
        fs::create_dir_all(&out).unwrap();
        let file = f.path(&format!("www.{format}"));
        fs::write(&file, &archive.body).unwrap();
        let status = Command::new(unpack[0])
            .args(&unpack[1..])
            .arg(&file)
            .current_dir(&out)
            .status()
            .unwrap();
        assert!(status.success(), "{format}");
        let got = tree(&out.join("www"));
        // zip keeps modes of files and directories; tar everything.
        assert_eq!(got, want, "{format}");
    }

    // The audit log names each download with its bytes.
    let audit = fs::read_to_string(f.path("audit.log")).unwrap();
    let downloads: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["event"] == "download")
        .collect();
    assert!(downloads
        .iter()
        .all(|d| d["user"] == "alice" && d["host"] == "web1"));
    assert!(downloads
        .iter()
        .any(|d| d["format"] == "zip" && d["path"].as_str().unwrap().ends_with("/var/www")));
    assert!(downloads
        .iter()
        .any(|d| d["format"] == "file" && d["bytes"] == (3u64 << 20)));
    // Every download audited once: 3 of index.html, the id and name GETs, 4 of big.bin
    // (middle, tail, whole; the 416 and the HEAD send nothing), 2 archives.
    assert!(!downloads.iter().any(|d| d["bytes"] == 0), "{downloads:?}");
}

#[test]
fn another_accounts_hosts_and_snapshots_are_not_found_and_paths_never_climb() {
    let f = fleet(1000);
    let server = serve_unix(&f);
    let alice = login(&server.socket(), "alice");
    let db1_id = snapshots_of(&f.repo, "db1").remove(0).1;
    let db1_name = snapshots_of(&f.repo, "db1").remove(0).0;
    // Another account's host, its snapshot by stable name and by id under alice's host:
    // the same 404 as a host or snapshot that does not exist.
    for target in [
        "/host/db1".to_string(),
        format!("/browse/db1/{db1_name}/"),
        format!("/browse/db1/{}/", &db1_id[..12]),
        format!("/download/db1/{}/var/lib/other-customer.sql", &db1_id[..12]),
        format!("/browse/web1/{}/", &db1_id[..12]),
        format!("/browse/web1/{db1_id}/"),
        "/host/nosuchhost".to_string(),
        "/browse/nosuchhost/daily.0/".to_string(),
        "/browse/web1/daily.9/".to_string(),
    ] {
        let got = alice.get(&target);
        assert_eq!(got.status, 404, "{target}: {}", got.text());
        assert!(!got.text().contains("other customer"), "{target}");
    }
    // Traversal in every spelling: refused (400) or not found, never another's file.
    let base = url(&f, "browse", "daily.0", "");
    for target in [
        format!("{base}/../../../../db1"),
        format!("{base}/%2e%2e/%2e%2e"),
        format!("{base}/%2E%2E%2f%2E%2E"),
        format!("{base}/..%2f..%2fdb1"),
        format!("{base}/%252e%252e/%252e%252e"),
        format!("{base}/.%2e/"),
        "/browse/web1/daily.0/..%2f..%2fdb1%2f".to_string(),
        "/browse/web1/..%2Fdb1/".to_string(),
        "/browse/..%2fdb1/daily.0/".to_string(),
        "/browse/web1%2f..%2fdb1/daily.0/".to_string(),
        format!("/download/web1/daily.0/..%2F..%2Fhosts%2Fdb1%2F{db1_name}%2Fvar%2Flib%2Fother-customer.sql"),
        format!("/download/web1/daily.0/%2e%2e/%2e%2e/hosts/db1/{db1_name}/var/lib/other-customer.sql"),
        "/download/web1/daily.0/a%00b".to_string(),
        "/static/../hosts".to_string(),
    ] {
        let got = alice.get(&target);
        assert!(
            got.status == 400 || got.status == 404,
            "{target}: {} {}",
            got.status,
            got.text()
        );
        assert!(!got.text().contains("other customer"), "{target}");
    }
    // Without a session: to the login form, nothing served.
    let anonymous = request(
        &server.socket(),
        "GET",
        &url(&f, "download", "daily.0", "etc/hostname"),
        &[],
        b"",
    );
    assert_eq!(anonymous.status, 303);
    assert_eq!(anonymous.header("location"), Some("/login"));
    // bob sees db1 and not web1.
    let bob = login(&server.socket(), "bob");
    assert!(bob.get("/hosts").text().contains("db1"));
    assert_eq!(bob.get(&url(&f, "browse", "daily.0", "")).status, 404);
    // The operator sees both.
    let olga = login(&server.socket(), "olga");
    let hosts = olga.get("/hosts").text();
    assert!(hosts.contains("web1") && hosts.contains("db1"), "{hosts}");
}

#[test]
fn a_customer_reads_as_its_hosts_squashed_root_and_the_operator_as_root() {
    let f = fleet(1000);
    let server = serve_unix(&f);
    let alice = login(&server.socket(), "alice");
    // root/ is 0700 and root/secret.key 0600, both root's: a squashed root may not.
    assert_eq!(alice.get(&url(&f, "browse", "daily.0", "root")).status, 403);
    assert_eq!(
        alice
            .get(&url(&f, "download", "daily.0", "root/secret.key"))
            .status,
        403
    );
    // An archive of the host's whole tree leaves them out.
    let whole = alice.get(&format!(
        "{}?format=zip",
        url(&f, "download", "daily.0", "")
    ));
    assert_eq!(whole.status, 200);
    let zip = f.path("whole.zip");
    fs::write(&zip, &whole.body).unwrap();
    let listing = Command::new("unzip").arg("-l").arg(&zip).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("var/www/index.html"), "{listing}");
    assert!(listing.contains("root/"), "{listing}");
    assert!(!listing.contains("secret.key"), "{listing}");
    let olga = login(&server.socket(), "olga");
    let key = olga.get(&url(&f, "download", "daily.0", "root/secret.key"));
    assert_eq!(key.status, 200);
    assert_eq!(key.text(), "the customer's root key\n");
}

#[test]
fn hostile_names_render_as_text_and_download_under_a_safe_name() {
    let f = fleet(1000);
    let server = serve_unix(&f);
    for user in ["alice", "olga"] {
        let c = login(&server.socket(), user);
        let page = c.get(&url(&f, "browse", "daily.0", "var/www/hostile"));
        assert_eq!(page.status, 200);
        let text = page.text();
        assert!(!text.contains("<script>alert"), "{text}");
        assert!(!text.contains("<img src=x"), "{text}");
        assert!(!text.contains('\x1b') && !text.contains('\x07'));
        assert!(
            text.contains("&lt;script&gt;alert(1)&lt;\\script&gt;"),
            "{text}"
        );
        assert!(text.contains("bell\\x07esc\\x1b[2J"), "{text}");
        assert!(page
            .header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'"));
    }
    let alice = login(&server.socket(), "alice");
    for name in HOSTILE {
        let encoded: String = name.iter().map(|b| format!("%{b:02X}")).collect();
        let got = alice.get(&url(
            &f,
            "download",
            "daily.0",
            &format!("var/www/hostile/{encoded}"),
        ));
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(name));
        assert_eq!(got.text(), "hostile\n");
        // Exactly `attachment; filename="<no quote>"; filename*=UTF-8''<attr-chars>`.
        let cd = got.header("content-disposition").unwrap();
        let quoted = cd.strip_prefix("attachment; filename=\"").unwrap();
        let (ascii, rest) = quoted.split_once('"').unwrap();
        assert!(
            ascii
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'\\'),
            "{cd}"
        );
        let encoded = rest.strip_prefix("; filename*=UTF-8''").unwrap();
        assert!(
            encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"%-._~!#$&+^`|".contains(&b)),
            "{cd}"
        );
    }
}

#[test]
fn logins_are_limited_and_forms_need_their_tokens() {
    let f = fleet(1000);
    let server = serve_unix(&f);
    let socket = server.socket();
    for _ in 0..5 {
        assert_eq!(try_login(&socket, "alice", "wrong password").status, 401);
    }
    let limited = try_login(&socket, "alice", "wrong password");
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert!(
        limited
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    // Now even the right password waits: the limit is checked before the password.
    assert_eq!(try_login(&socket, "alice", webfront::PASSWORD).status, 429);
    // bob, from the same address, is not locked out by alice's attempts.
    let bob = login(&socket, "bob");

    // A login post without the form's cookie (another site's form) is refused.
    let forged = request(
        &socket,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!(
            "user=bob&password={}&csrf=00",
            webfront::form_value(webfront::PASSWORD)
        )
        .as_bytes(),
    );
    assert_eq!(forged.status, 403);
    // Logout without the session's CSRF token: refused, the session lives on.
    assert_eq!(bob.post("/logout", "csrf=").status, 403);
    assert_eq!(bob.post("/logout", "").status, 403);
    assert_eq!(bob.get("/hosts").status, 200);
    // With it: the session ends, its cookie no longer opens anything.
    let out = bob.post("/logout", &format!("csrf={}", bob.csrf));
    assert_eq!(out.status, 303);
    let after = bob.get("/hosts");
    assert_eq!(after.status, 303);
    assert_eq!(after.header("location"), Some("/login"));
    // Cookies are Secure, HttpOnly, SameSite=Strict, host-only.
    let ok_login = try_login(&socket, "olga", webfront::PASSWORD);
    let set = ok_login
        .headers
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case("set-cookie") && v.starts_with("__Host-xstore="))
        .unwrap()
        .1
        .clone();
    for part in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Domain"), "{set}");
    // The audit log has the failures, the limit and the logout.
    let audit = fs::read_to_string(f.path("audit.log")).unwrap();
    assert!(audit.contains("\"reason\":\"rate limited\""), "{audit}");
    assert_eq!(
        audit
            .matches("\"reason\":\"wrong user name or password\"")
            .count(),
        5
    );
    assert!(
        audit.contains("\"event\":\"logout\",\"user\":\"bob\"")
            || audit.contains("\"event\":\"logout\"")
    );
}

/// GETs a file (a `Content-Length` body) and hashes it as it arrives: the status, the hash.
fn hashed_download(socket: &Path, target: &str, cookie: &str) -> (u16, blake3::Hash) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head[9..12]).parse().unwrap();
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut s, &mut hasher).unwrap();
    (status, hasher.finalize())
}

#[test]
fn a_hundred_downloads_at_once_stay_in_bounded_memory() {
    const SIZE: usize = 48 << 20;
    let f = fleet(SIZE);
    let server = serve_unix(&f);
    let alice = login(&server.socket(), "alice");
    let want = blake3::hash(&webfront::pattern(SIZE, 7));
    let target = url(&f, "download", "hourly.0", "var/www/big.bin");
    let before = server.peak_rss();
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let socket = alice.socket.clone();
            let cookie = alice.cookie.clone();
            let target = target.clone();
            std::thread::spawn(move || hashed_download(&socket, &target, &cookie))
        })
        .collect();
    for t in threads {
        let (status, hash) = t.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(hash, want);
    }
    let peak = server.peak_rss();
    eprintln!(
        "100 downloads of {} MiB: server peak RSS {} MiB (before {} MiB)",
        SIZE >> 20,
        peak >> 20,
        before >> 20
    );
    // Each download holds a few pieces in flight; the chunk cache is bounded (128 MiB).
    assert!(peak < 512 << 20, "peak RSS {} MiB", peak >> 20);
}

#[test]
fn the_operator_sees_the_fleet_its_charts_and_the_audit_log_and_customers_do_not() {
    let f = fleet(1000);
    ok(&f.repo, &["gc"]);
    let server = serve_unix(&f);
    let alice = login(&server.socket(), "alice");
    alice.get(&url(&f, "download", "daily.0", "etc/hostname"));
    let olga = login(&server.socket(), "olga");
    // web2 was never backed up: CRITICAL, with its cause.
    let fleet_page = olga.get("/operator");
    assert_eq!(fleet_page.status, 200);
    let text = fleet_page.text();
    assert!(text.contains("Hosts stale or failing (1 of 3)"), "{text}");
    assert!(text.contains("never backed up completely"), "{text}");
    assert!(
        text.contains(">acme<") && text.contains(">other<"),
        "{text}"
    );
    assert!(
        text.contains(">verify<") && text.contains(">pulls<"),
        "{text}"
    );
    // The audit log: alice's login and download, newest first.
    let audit = olga.get("/audit").text();
    assert!(
        audit.contains("download") && audit.contains("etc/hostname"),
        "{audit}"
    );
    // Charts are SVG images drawn from the history (sampled at start).
    for chart in ["/chart/usage.svg", "/chart/pulls.svg"] {
        let svg = olga.get(chart);
        assert_eq!(svg.status, 200, "{chart}");
        assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
        assert!(svg.text().starts_with("<svg"), "{chart}");
    }
    assert!(olga.get("/chart/usage.svg").text().contains("repository"));
    let history = fs::read_to_string(f.path("history.jsonl")).unwrap();
    assert!(
        history.contains("\"kind\":\"account\",") && history.contains("\"account\":\"other\""),
        "{history}"
    );
    // A customer: its own account's usage and chart, no operator page, no other account.
    for page in [
        "/operator",
        "/audit",
        "/chart/pulls.svg",
        "/chart/other.svg",
    ] {
        assert_eq!(alice.get(page).status, 404, "{page}");
    }
    let usage = alice.get("/usage").text();
    assert!(
        usage.contains(">acme<") && !usage.contains(">other<"),
        "{usage}"
    );
    let chart = alice.get("/chart/usage.svg").text();
    assert!(
        chart.contains("acme stored") && !chart.contains("other"),
        "{chart}"
    );
}

/// `Authorization: Basic …` of a user.
fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn dav(
    socket: &Path,
    method: &str,
    target: &str,
    auth: &str,
    depth: Option<&str>,
) -> webfront::Answer {
    let mut headers = vec![("Authorization", auth)];
    if let Some(d) = depth {
        headers.push(("Depth", d));
    }
    request(socket, method, target, &headers, b"")
}

#[test]
fn webdav_serves_the_same_tree_read_only_to_the_same_logins() {
    let f = fleet(1000);
    let server = serve_unix(&f);
    let s = server.socket();
    let alice = basic("alice", webfront::PASSWORD);
    // No credentials, a wrong password: 401 asking for Basic.
    let none = request(&s, "PROPFIND", "/dav/", &[("Depth", "1")], b"");
    assert_eq!(none.status, 401);
    assert!(none
        .header("www-authenticate")
        .unwrap()
        .starts_with("Basic realm="));
    assert_eq!(
        dav(
            &s,
            "PROPFIND",
            "/dav/",
            &basic("alice", "wrong password"),
            Some("1")
        )
        .status,
        401
    );
    // The root: tier positions and hosts/, as the mount shows them.
    let root = dav(&s, "PROPFIND", "/dav/", &alice, Some("1"));
    assert_eq!(root.status, 207, "{}", root.text());
    for href in [
        "/dav/daily.0/",
        "/dav/daily.1/",
        "/dav/hourly.0/",
        "/dav/hosts/",
    ] {
        assert!(root.text().contains(href), "{href}: {}", root.text());
    }
    let hosts = dav(&s, "PROPFIND", "/dav/hosts/", &alice, Some("1")).text();
    assert!(
        hosts.contains("/dav/hosts/web1/") && !hosts.contains("db1"),
        "{hosts}"
    );
    let tier = dav(&s, "PROPFIND", "/dav/daily.0/", &alice, Some("1")).text();
    assert!(
        tier.contains("/dav/daily.0/web1/") && !tier.contains("db1"),
        "{tier}"
    );
    // A file of daily.1: the first backup's bytes.
    let base = f.web1.to_str().unwrap().trim_start_matches('/');
    let index = dav(
        &s,
        "GET",
        &format!("/dav/daily.1/web1/{base}/var/www/index.html"),
        &alice,
        None,
    );
    assert_eq!(index.status, 200);
    assert_eq!(index.text(), f.index_versions[0]);
    // Another account's host: not found, by any path; nothing written, ever.
    let db1 = snapshots_of(&f.repo, "db1").remove(0).0;
    for target in [
        format!("/dav/hosts/db1/{db1}/var/lib/other-customer.sql"),
        "/dav/hosts/db1/".to_string(),
        "/dav/daily.0/db1/".to_string(),
        format!("/dav/daily.0/web1/../../hosts/db1/{db1}/var/lib/other-customer.sql"),
        format!("/dav/daily.0/web1/%2e%2e/%2e%2e/hosts/db1/{db1}/var/lib/other-customer.sql"),
    ] {
        for method in ["GET", "PROPFIND"] {
            let got = dav(&s, method, &target, &alice, Some("0"));
            assert!(
                [400, 403, 404].contains(&got.status),
                "{method} {target}: {} {}",
                got.status,
                got.text()
            );
            assert!(!got.text().contains("other customer"), "{target}");
        }
    }
    for method in [
        "PUT",
        "DELETE",
        "MKCOL",
        "MOVE",
        "COPY",
        "PROPPATCH",
        "LOCK",
    ] {
        let got = dav(
            &s,
            method,
            &format!("/dav/daily.0/web1/{base}/etc/hostname"),
            &alice,
            None,
        );
        assert!([403, 405].contains(&got.status), "{method}: {}", got.status);
    }
    // Hostile names stay inside their XML elements, percent-encoded in hrefs.
    let hostile = dav(
        &s,
        "PROPFIND",
        &format!("/dav/daily.0/web1/{base}/var/www/hostile/"),
        &alice,
        Some("1"),
    );
    assert_eq!(hostile.status, 207);
    let xml = hostile.text();
    assert!(!xml.contains("<script>") && !xml.contains("<img"), "{xml}");
    assert!(!xml.contains('\x1b') && !xml.contains('\x07'), "{xml}");
    assert_eq!(
        xml.matches("<D:response>").count(),
        1 + HOSTILE.len(),
        "{xml}"
    );
    // Permissions as on the pages: the customer's squashed root may not read root's key.
    let key = format!("/dav/daily.0/web1/{base}/root/secret.key");
    assert_eq!(dav(&s, "GET", &key, &alice, None).status, 403);
    let olga = dav(&s, "GET", &key, &basic("olga", webfront::PASSWORD), None);
    assert_eq!(olga.text(), "the customer's root key\n");
    // Downloads over WebDAV are in the audit log.
    let audit = fs::read_to_string(f.path("audit.log")).unwrap();
    assert!(audit.contains("\"format\":\"webdav\""), "{audit}");
    assert!(audit.contains("/var/www/index.html"), "{audit}");
}

#[test]
fn a_server_that_cannot_start_says_why_in_one_line() {
    let f = fleet(1000);
    let run = |args: &[&str]| {
        let mut all = vec!["serve-web"];
        all.extend_from_slice(args);
        let inventory = f.path("hosts.toml");
        let users = f.path("users.toml");
        let audit = f.path("audit.log");
        let history = f.path("history.jsonl");
        all.extend_from_slice(&["--inventory", inventory.to_str().unwrap()]);
        all.extend_from_slice(&["--users", users.to_str().unwrap()]);
        all.extend_from_slice(&["--audit-log", audit.to_str().unwrap()]);
        all.extend_from_slice(&["--history", history.to_str().unwrap()]);
        common::xstore(&f.repo, &all)
    };
    let missing = f.path("nope.pem");
    let out = run(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        missing.to_str().unwrap(),
        "--tls-key",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("nope.pem"), "{err}");
    // A users file others may read: refused, saying so, before anything listens.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(f.path("users.toml"), fs::Permissions::from_mode(0o644)).unwrap();
    let socket = f.path("s.sock");
    let out = run(&["--unix", socket.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("users.toml") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!socket.exists());
    // Something that is not a socket where the socket goes is never removed.
    fs::set_permissions(f.path("users.toml"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&socket, "precious").unwrap();
    let out = run(&["--unix", socket.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("not a socket"),
        "{}",
        common::stderr(&out)
    );
    assert_eq!(fs::read_to_string(&socket).unwrap(), "precious");
}
