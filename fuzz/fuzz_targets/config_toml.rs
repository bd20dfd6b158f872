//! Configuration text: the platform's `sipmba.toml` and the edge agent's `config.toml`. Any text
//! is refused with an error naming the setting, or accepted; an accepted platform file written
//! back out (as the operator writes one) loads to the same settings.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a fuzz target fails loudly

use libfuzzer_sys::fuzz_target;
use sipmba::config::{Args, ConfigFile, from_toml};
use sipmba_runtime::Defaults;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let defaults = Defaults {
        listen: Some("127.0.0.1:7400".into()),
        plaintext: true,
        database_url: Some("sqlite::memory:".into()),
        own_keys: true,
        partitions: Some(1),
    };
    let args = Args::default();
    match from_toml(text, &args, &defaults) {
        Ok(loaded) => {
            let file: ConfigFile = toml::from_str(text).expect("loaded, so it parses");
            let written = file.to_toml().expect("an accepted file renders");
            let again = from_toml(&written, &args, &defaults)
                .unwrap_or_else(|e| panic!("its rendering {written:?} is refused: {e}"));
            assert_eq!(again, loaded, "{written}");
        }
        Err(e) => assert!(!e.setting.is_empty() && !e.to_string().is_empty()),
    }
    if let Err(e) = sipmba_edge::config::Config::parse(text) {
        assert!(!e.key.is_empty() && !e.message.is_empty());
    }
});
