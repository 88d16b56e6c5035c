//! Conversions between wire values and the core's domain values that both
//! sides of the contract make (the registry's service and the CLI), written
//! once: times, database positions.

use stackpin_core::position::DbPosition;
use stackpin_core::time::Timestamp;

use crate::v1 as pb;

/// The wire form of an instant.
pub fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    let (seconds, nanos) = t.to_parts();
    prost_types::Timestamp { seconds, nanos }
}

/// The instant a wire timestamp names.
///
/// # Errors
/// Invalid when it is out of range.
pub fn instant(t: &prost_types::Timestamp) -> stackpin_core::Result<Timestamp> {
    Timestamp::from_parts(t.seconds, t.nanos)
}

/// The wire form of a database position.
pub fn db_position(p: &DbPosition) -> pb::DbPosition {
    use pb::db_position::Position;
    pb::DbPosition {
        position: Some(match p {
            DbPosition::PostgresLsn { lsn } => Position::PostgresLsn(lsn.clone()),
            DbPosition::RestorePoint { name } => Position::RestorePoint(name.clone()),
            DbPosition::LitestreamTxid { txid } => Position::LitestreamTxid(txid.clone()),
            DbPosition::MongoOplogTs { ts } => Position::MongoOplogTs(ts.clone()),
        }),
    }
}

/// The database position a wire value names (`None` when unset), parsed
/// as the registry parses it.
///
/// # Errors
/// Invalid for a malformed LSN, restore point name or TXID.
pub fn position(p: Option<&pb::DbPosition>) -> stackpin_core::Result<Option<DbPosition>> {
    use pb::db_position::Position;
    match p.and_then(|p| p.position.as_ref()) {
        None => Ok(None),
        Some(Position::PostgresLsn(l)) => DbPosition::lsn(l).map(Some),
        Some(Position::RestorePoint(n)) => DbPosition::restore_point(n).map(Some),
        Some(Position::LitestreamTxid(t)) => DbPosition::txid(t).map(Some),
        Some(Position::MongoOplogTs(t)) => DbPosition::oplog_ts(t).map(Some),
    }
}
