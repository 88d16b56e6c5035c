//! The ObjectOS runtime image a pin records, with the real binaries:
//! named by digest (a tag alone is refused), part of the proved pin entry,
//! shown by resolve, restore and status, flagged by posture when the
//! latest pin has none, and carried back by a rollback.

#![allow(clippy::unwrap_used)] // tests panic on purpose

use stackpin_tests::world::{T1, T2, T3, World};

fn image(n: char) -> String {
    format!(
        "ghcr.io/objectos/objectos:1.{n}@sha256:{}",
        n.to_string().repeat(64)
    )
}

#[test]
fn a_pin_records_its_runtime_image_by_digest_and_every_view_shows_it() {
    let w = World::new(&[]);
    w.publish_releases(3);
    let (a, b) = (image('a'), image('b'));
    // A tag is not a version: refused, nothing written.
    w.cli(&[
        "pin",
        "--env",
        "prod",
        "--new-env",
        "--release-id",
        "rel-1",
        "--runtime-image",
        "ghcr.io/objectos/objectos:1.4",
    ])
    .fails(2, "a tag is not a version");
    assert_eq!(
        w.cli(&["--output", "json", "status"]).json()["environments"],
        serde_json::json!([])
    );
    for (release, at, img) in [
        ("rel-1", T1, Some(&a)),
        ("rel-2", T2, Some(&b)),
        ("rel-3", T3, None),
    ] {
        let mut args = vec![
            "--output",
            "json",
            "pin",
            "--env",
            "prod",
            "--new-env",
            "--release-id",
            release,
            "--activated-at",
            at,
        ];
        if let Some(i) = img {
            args.extend(["--runtime-image", i.as_str()]);
        }
        let pin = w.cli(&args).json();
        assert_eq!(
            pin["runtime_image"].as_str(),
            img.map(String::as_str),
            "{pin}"
        );
    }

    let resolved = w.cli(&["resolve", "--env", "prod", "--at", "2026-03-01T10:30:00Z"]);
    assert!(
        resolved.ok().contains(&format!("runtime    {a}")),
        "{resolved:?}"
    );
    let plan = w
        .cli(&[
            "--output",
            "json",
            "restore",
            "--env",
            "prod",
            "--at",
            "2026-03-01T11:30:00Z",
            "--plan",
        ])
        .json();
    assert_eq!(plan["database"]["runtime_image"], b.as_str());
    let text = w.cli(&[
        "restore",
        "--env",
        "prod",
        "--at",
        "2026-03-01T11:30:00Z",
        "--plan",
    ]);
    assert!(
        text.ok()
            .contains(&format!("then start ObjectOS {b} on this artifact")),
        "{text:?}"
    );
    // The live pin (rel-3) records none, and says so.
    let text = w.cli(&["restore", "--env", "prod", "--at", T3, "--plan"]);
    assert!(
        text.ok().contains("the pin records no runtime image"),
        "{text:?}"
    );

    // Posture flags it, from the proved pins.
    let imageless = |w: &World| {
        let run = w.cli(&["--output", "json", "posture", "--env", "prod"]);
        assert!(matches!(run.code, 0 | 8), "{run:?}");
        let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        report["environments"][0]["runtime_image_missing"].clone()
    };
    assert_eq!(imageless(&w), true);
    let text = w.cli(&["posture", "--env", "prod"]);
    assert!(
        text.stdout
            .contains("the latest pin (#3) records no ObjectOS image"),
        "{text:?}"
    );

    // A rollback to rel-2 brings back the runtime rel-2 ran with.
    let back = w
        .cli(&[
            "--output", "json", "rollback", "--env", "prod", "--to", "rel-2", "--yes",
        ])
        .json();
    assert_eq!(back["pin"]["runtime_image"], b.as_str(), "{back}");
    let status = w.cli(&["status"]);
    assert!(status.ok().contains(&format!("runtime {b}")), "{status:?}");
    assert_eq!(imageless(&w), false);
}
