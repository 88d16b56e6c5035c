//! The crash drill, short: CI runs 10 kill -9 cycles on the local folder, on
//! S3 (SeaweedFS and moto) and on Azure Blob (Azurite). Long runs use the
//! `crash-drill` binary.

use stackpin_tests::drill::{self, Backend};
use stackpin_tests::remote::{Azurite, Moto, Remote};
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

fn ten_cycles_lose_nothing(remote: &dyn Remote, seed: u64) {
    let report = drill::run(10, 4, Backend::Remote(remote), seed);
    eprintln!("{}: {report:?}", remote.name());
    assert_eq!(report.cycles, 10);
    assert_eq!(report.losses, 0, "lost: {:?}", report.lost);
    assert!(
        report.acknowledged_pins + report.acknowledged_publishes > 0,
        "{report:?}"
    );
}

#[test]
fn ten_crash_cycles_on_s3_lose_nothing() {
    ten_cycles_lose_nothing(&Seaweed::start(), 2);
}

#[test]
fn ten_crash_cycles_on_a_second_s3_moto_lose_nothing() {
    ten_cycles_lose_nothing(&Moto::start(), 3);
}

#[test]
fn ten_crash_cycles_on_azure_blob_azurite_lose_nothing() {
    ten_cycles_lose_nothing(&Azurite::start(), 4);
}
