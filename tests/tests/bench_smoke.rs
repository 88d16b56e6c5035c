//! The load generator, briefly: it runs each workload against a real server
//! and reports sane numbers. Not a timed pass/fail test: speed is measured
//! in BENCHMARKS.md, not asserted here.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use stackpin_tests::world::World;

#[test]
fn every_bench_workload_runs_and_reports() {
    let w = World::new(&[]);
    let pid = w.server.pid().to_string();
    for (workload, extra) in [
        ("pin", vec!["--envs", "2"]),
        ("resolve", vec![]),
        ("publish", vec!["--size", "4KiB"]),
        ("fetch", vec!["--size", "64KiB"]),
    ] {
        let mut args = vec![
            "--output",
            "json",
            workload,
            "--key",
            "ci.pem",
            "--concurrency",
            "4",
            "--duration",
            "1s",
            "--server-pid",
            &pid,
        ];
        args.extend(extra);
        // The load generator is its own binary, beside `stackpin`.
        let out = std::process::Command::new(stackpin_tests::bin("stackpin-bench"))
            .current_dir(w.dir.path())
            .env("STACKPIN_SERVER", w.server.url())
            .args(&args)
            .output()
            .unwrap();
        let report = stackpin_tests::Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
        .json();
        let ok = report["requests_ok"].as_u64().unwrap();
        assert!(ok > 0, "{workload}: {report}");
        assert_eq!(
            report["errors"].as_u64().unwrap(),
            0,
            "{workload}: {report}"
        );
        let p50 = report["latency_ms"]["p50"].as_f64().unwrap();
        let max = report["latency_ms"]["max"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= max, "{workload}: {report}");
        assert!(
            report["throughput_rps"].as_f64().unwrap() > 0.0,
            "{workload}: {report}"
        );
        assert!(
            report["server"]["peak_rss_mib"].as_f64().unwrap() > 1.0,
            "{workload}: {report}"
        );
    }
}
