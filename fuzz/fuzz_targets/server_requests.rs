//! Fuzz target: the agent's decoder of server requests, and the agent itself serving them
//! against a small allow-listed tree. Nothing may panic, and nothing outside the tree is
//! ever read (the agent opens nothing for writing by construction).
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use xstore_format::protocol::{read_frame, ServerMsg};

fn config() -> &'static xstore_agent::AgentConfig {
    static CONFIG: OnceLock<xstore_agent::AgentConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("xstore-fuzz-agent-{}", std::process::id()));
        let _ = std::fs::create_dir_all(root.join("d"));
        let _ = std::fs::write(root.join("d/f"), b"fuzz file content");
        let _ = std::os::unix::fs::symlink("/etc", root.join("d/up"));
        let text = format!("{}\n", root.display());
        xstore_agent::AgentConfig::parse(&text, std::path::Path::new("fuzz.conf"))
            .unwrap_or(xstore_agent::AgentConfig {
                roots: Vec::new(),
                missing: Vec::new(),
                optional_missing: Vec::new(),
            })
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = xstore_format::decode::server_stream(data);
    let mut rest = data;
    while let Ok(Some(body)) = read_frame(&mut rest) {
        if let Ok(msg) = ServerMsg::decode(&body) {
            assert_eq!(msg.encode(), body);
        }
    }
    let _ = xstore_agent::serve(config(), data, std::io::sink(), 1);
});
