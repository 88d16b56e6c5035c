//! `crash-drill`: the crash drill for long runs (CI runs a short one as a
//! test). Prints the report as JSON.
//!
//! ```text
//! crash-drill [--cycles 200] [--workers 4] [--storage file|s3] [--seed N]
//! ```
//! The S3 run starts its own SeaweedFS (see `stackpin_tests::s3`).

use stackpin_tests::drill::{self, Backend};
use stackpin_tests::s3::Seaweed;

fn main() {
    let mut cycles = 200;
    let mut workers = 4;
    let mut s3 = false;
    let mut seed = 0x5eed;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().map(String::as_str);
        match (flag.as_str(), value) {
            ("--cycles", Some(v)) => cycles = v.parse().unwrap_or_else(|_| usage()),
            ("--workers", Some(v)) => workers = v.parse().unwrap_or_else(|_| usage()),
            ("--seed", Some(v)) => seed = v.parse().unwrap_or_else(|_| usage()),
            ("--storage", Some("file")) => s3 = false,
            ("--storage", Some("s3")) => s3 = true,
            _ => usage(),
        }
    }
    let started = std::time::Instant::now();
    let weed = s3.then(Seaweed::start);
    let backend = match &weed {
        Some(w) => Backend::Remote(w),
        None => Backend::Local,
    };
    let report = drill::run(cycles, workers, backend, seed);
    let json = serde_json::json!({
        "storage": if s3 { "s3" } else { "file" },
        "seconds": started.elapsed().as_secs_f64(),
        "report": report,
    });
    println!("{json:#}");
}

fn usage() -> ! {
    eprintln!("usage: crash-drill [--cycles N] [--workers N] [--storage file|s3] [--seed N]");
    std::process::exit(2)
}
