//! `stackpin status` (alias `envs`) over ListEnvironments: every
//! environment with what is live now, paged.

#![allow(clippy::unwrap_used)]

use stackpin_tests::world::World;

#[test]
fn status_lists_every_environment_with_what_is_live_now() {
    let world = World::new(&[]);
    let empty = world.cli(&["status"]).ok().to_owned();
    assert!(empty.contains("no environments yet"), "{empty}");
    world.three_releases();
    for env in ["staging", "dev"] {
        world
            .cli(&[
                "pin",
                "--env",
                env,
                "--new-env",
                "--release-id",
                "rel-2",
                "--db-lsn",
                "0/16B3748",
            ])
            .ok();
    }
    let all = world.cli(&["--output", "json", "status"]).json();
    let envs: Vec<&str> = all["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["env"].as_str().unwrap())
        .collect();
    assert_eq!(envs, ["dev", "prod", "staging"]);
    let prod = &all["environments"][1];
    assert_eq!(prod["live"]["release_id"], "rel-3");
    assert_eq!(prod["pins"], 3);
    assert!(
        prod["seconds_since_last_pin"].as_i64().unwrap() >= 0,
        "{prod}"
    );
    assert_eq!(
        all["environments"][2]["live"]["db_position"],
        "LSN 0/16B3748"
    );

    // Paged: two, then the rest, with no gap and no repeat.
    let first = world
        .cli(&["--output", "json", "envs", "--limit", "2"])
        .json();
    assert_eq!(first["environments"].as_array().unwrap().len(), 2);
    let token = first["next_page_token"].as_str().unwrap().to_owned();
    let rest = world
        .cli(&[
            "--output",
            "json",
            "status",
            "--limit",
            "2",
            "--page-token",
            &token,
        ])
        .json();
    assert_eq!(rest["environments"][0]["env"], "staging");
    assert!(rest.get("next_page_token").is_none(), "{rest}");

    let text = world.cli(&["status"]).ok().to_owned();
    assert!(
        text.contains("prod  live rel-3") && text.contains("3 pin(s)"),
        "{text}"
    );
    world
        .cli(&["status", "--page-token", "../x"])
        .fails(2, "page_token");
}
