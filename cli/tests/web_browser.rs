//! The web front in a real browser: Debian's headless chromium driven through chromedriver
//! (WebDriver), against `xstore serve-web` on 127.0.0.1 with a test certificate. A customer
//! logs in, clicks to a file in `daily.1` and downloads it, takes a directory as `.tar.gz`
//! and `.zip`, finds another account's host nowhere, sees hostile names as text, loses a
//! form without its CSRF token, logs out; the operator sees the same names inert; an idle
//! session ends. Screenshots of the main pages go to `<target tmp>/web-screenshots/`.
#![allow(clippy::unwrap_used)]

mod common;
mod webfront;

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use webfront::{fleet, serve_https, snapshots_of, tree, HOSTILE, PASSWORD};

struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn chromedriver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver) is installed by scripts/setup.sh");
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver { child, port }
}

async fn browser(driver: &Driver, downloads: &Path, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("acceptInsecureCerts".into(), true.into());
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": {
                "download.default_directory": downloads.display().to_string(),
                "download.prompt_for_download": false,
                "download.directory_upgrade": true,
                "safebrowsing.enabled": false,
            },
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .unwrap()
}

async fn shot(c: &Client, name: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join(format!("{name}.png")),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
}

/// Waits for the browser to finish downloading `name` into `dir`; its bytes.
fn downloaded(dir: &Path, name: &str) -> Vec<u8> {
    let start = Instant::now();
    loop {
        let partial = fs::read_dir(dir).map_or(true, |d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".crdownload"))
        });
        if !partial {
            if let Ok(bytes) = fs::read(dir.join(name)) {
                return bytes;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{name} did not download"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the page's path is `path` (a click's navigation may still be under way when
/// the click returns).
async fn wait_path(c: &Client, path: &str) {
    let start = Instant::now();
    loop {
        if c.current_url().await.unwrap().path() == path {
            return;
        }
        if start.elapsed() > Duration::from_secs(15) {
            panic!(
                "still at {} instead of {path}: {}",
                c.current_url().await.unwrap(),
                c.source().await.unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the page holds `text`.
async fn wait_text(c: &Client, text: &str) {
    let start = Instant::now();
    while !c.source().await.unwrap().contains(text) {
        if start.elapsed() > Duration::from_secs(15) {
            panic!("no {text:?} in {}", c.source().await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn log_in(c: &Client, base: &str, user: &str) {
    c.goto(&format!("{base}/login")).await.unwrap();
    c.find(Locator::Id("user"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    c.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    c.find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(c, "/hosts").await;
}

async fn click_link(c: &Client, text: &str) {
    c.find(Locator::LinkText(text))
        .await
        .unwrap_or_else(|e| panic!("no link {text:?}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Checks that hostile names are shown as text: no element came of them, each name is a
/// link's text exactly as the page shows names (control characters escaped).
async fn hostile_names_are_text(c: &Client) {
    let made = c
        .execute(
            "return document.querySelectorAll('script, img, svg, iframe').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(made, serde_json::json!(0));
    let texts: Vec<String> = {
        let mut v = Vec::new();
        for a in c.find_all(Locator::Css("td.name a")).await.unwrap() {
            v.push(a.text().await.unwrap());
        }
        v
    };
    for name in HOSTILE {
        let shown = xstore::text::printable_bytes(name);
        assert!(texts.contains(&shown), "{shown:?} not among {texts:?}");
    }
}

fn unpack(archive: &Path, into: &Path, zip: bool) {
    fs::create_dir_all(into).unwrap();
    let mut cmd = if zip {
        let mut c = Command::new("unzip");
        c.args(["-q", "-^"]);
        c
    } else {
        let mut c = Command::new("tar");
        c.arg("xzf");
        c
    };
    assert!(cmd
        .arg(archive)
        .current_dir(into)
        .status()
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_restores_in_a_real_browser_and_the_operator_sees_names_inert() {
    let f = fleet(300_000);
    let server = serve_https(&f, &[]);
    let base = server.at.trim_end_matches('/').to_string();
    let driver = chromedriver();
    let downloads = f.path("downloads");
    fs::create_dir_all(&downloads).unwrap();
    let c = browser(&driver, &downloads, &f.path("profile")).await;

    c.goto(&format!("{base}/login")).await.unwrap();
    shot(&c, "login").await;
    log_in(&c, &base, "alice").await;
    shot(&c, "hosts").await;
    let hosts = c.source().await.unwrap();
    assert!(hosts.contains("web1") && !hosts.contains("db1"), "{hosts}");

    // Click down to var/www in daily.1 (the first backup), then to index.html.
    click_link(&c, "web1").await;
    shot(&c, "snapshots").await;
    click_link(&c, "daily.1").await;
    let www = f.web1.join("var/www");
    for part in www.iter().skip(1) {
        click_link(&c, &format!("{}/", part.to_str().unwrap())).await;
    }
    shot(&c, "directory").await;
    let directory_url = c.current_url().await.unwrap();
    click_link(&c, "index.html").await;
    shot(&c, "file").await;
    c.find(Locator::Id("download"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(downloaded(&downloads, "index.html")).unwrap(),
        f.index_versions[0]
    );

    // The directory as .tar.gz and .zip: both unpack to what restore writes.
    let want = webfront::restored_www(&f);
    for (id, name, zip) in [
        ("download-tgz", "www.tar.gz", false),
        ("download-zip", "www.zip", true),
    ] {
        c.goto(directory_url.as_str()).await.unwrap();
        c.find(Locator::Id(id))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        downloaded(&downloads, name);
        let into = f.path(&format!("unpacked-{name}"));
        unpack(&downloads.join(name), &into, zip);
        assert_eq!(tree(&into.join("www")), want, "{name}");
    }

    // Another account's host: nowhere on the pages, and typed by hand, not found.
    let db1 = snapshots_of(&f.repo, "db1").remove(0).1;
    for typed in [
        format!("{base}/host/db1"),
        format!("{base}/browse/db1/{}/", &db1[..12]),
        format!("{base}/browse/web1/{}/", &db1[..12]),
        format!(
            "{base}/download/db1/{}/var/lib/other-customer.sql",
            &db1[..12]
        ),
    ] {
        c.goto(&typed).await.unwrap();
        let page = c.source().await.unwrap();
        assert!(page.contains("Error 404"), "{typed}: {page}");
        assert!(!page.contains("other customer"), "{typed}");
    }
    assert!(!fs::read_dir(&downloads)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains("other-customer")));

    // Hostile names are text.
    c.goto(&format!("{}hostile/", directory_url.as_str()))
        .await
        .unwrap();
    shot(&c, "hostile-customer").await;
    hostile_names_are_text(&c).await;

    // A form without its CSRF token is refused, and the session lives on.
    c.goto(&format!("{base}/hosts")).await.unwrap();
    c.execute(
        "document.querySelector('form.logout input[name=csrf]').remove()",
        vec![],
    )
    .await
    .unwrap();
    c.find(Locator::Id("logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "Error 403").await;
    c.goto(&format!("{base}/hosts")).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/hosts");
    // Logout: back to the form, and the pages need a login again.
    c.find(Locator::Id("logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(&c, "/login").await;
    c.goto(&format!("{base}/hosts")).await.unwrap();
    wait_path(&c, "/login").await;

    // The operator: every account's hosts, the hostile names inert on their pages too.
    log_in(&c, &base, "olga").await;
    let hosts = c.source().await.unwrap();
    assert!(hosts.contains("web1") && hosts.contains("db1"), "{hosts}");
    shot(&c, "operator-hosts").await;
    c.goto(&format!("{base}/operator")).await.unwrap();
    wait_text(&c, "Hosts stale or failing").await;
    shot(&c, "operator").await;
    c.goto(&format!("{base}/usage")).await.unwrap();
    shot(&c, "usage").await;
    c.goto(&format!("{}hostile/", directory_url.as_str()))
        .await
        .unwrap();
    shot(&c, "hostile-operator").await;
    hostile_names_are_text(&c).await;
    c.find(Locator::Id("logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(&c, "/login").await;

    // An idle session ends: a server whose sessions idle out after 2 s.
    drop(server);
    let short = serve_https(&f, &["--session-idle", "2s"]);
    let base = short.at.trim_end_matches('/').to_string();
    log_in(&c, &base, "alice").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.goto(&format!("{base}/hosts")).await.unwrap();
    wait_path(&c, "/login").await;
    c.close().await.unwrap();
}
