//! Points the embedded console (`src/console.rs`) at `console/dist` when it is built, or at a page
//! that says how to build it.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let dist = manifest.join("../../console/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    println!(
        "cargo:rerun-if-changed={}",
        dist.join("index.html").display()
    );
    let folder = if dist.join("index.html").is_file() {
        println!("cargo:rustc-env=SIPMBA_CONSOLE_BUILT=1");
        dist.canonicalize()?
    } else {
        let out = PathBuf::from(std::env::var("OUT_DIR")?).join("console-missing");
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("index.html"), MISSING)?;
        out
    };
    println!("cargo:rustc-env=SIPMBA_CONSOLE_DIST={}", folder.display());
    Ok(())
}

const MISSING: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>SIP-MBA</title></head><body><main><h1>SIP-MBA</h1>\
<p>This <code>sipmba</code> binary was built without its web console. Build the console \
(<code>.ci/setup console</code>, which needs Node.js and npm) and then the binary again; the \
<code>sipmba</code> CLI does everything the console does.</p></main></body></html>\n";
