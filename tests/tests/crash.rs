//! The crash drill, short: CI runs 10 kill -9 cycles on the local folder and
//! on S3. Long runs use the `crash-drill` binary.

use stackpin_tests::drill::{self, Backend};
use stackpin_tests::s3::Seaweed;

#[test]
fn ten_crash_cycles_on_the_local_folder_lose_nothing() {
    let report = drill::run(10, 4, Backend::Local, 1);
    eprintln!("{report:?}");
    assert_eq!(report.cycles, 10);
    assert_eq!(report.losses, 0, "lost: {:?}", report.lost);
    assert!(
        report.acknowledged_pins + report.acknowledged_publishes > 0,
        "{report:?}"
    );
}

#[test]
fn ten_crash_cycles_on_s3_lose_nothing() {
    let weed = Seaweed::start();
    let report = drill::run(10, 4, Backend::S3(&weed), 2);
    eprintln!("{report:?}");
    assert_eq!(report.cycles, 10);
    assert_eq!(report.losses, 0, "lost: {:?}", report.lost);
    assert!(
        report.acknowledged_pins + report.acknowledged_publishes > 0,
        "{report:?}"
    );
}
