//! Database positions a pin can record: the exact link between a database
//! state and an artifact, with no clock involved.
//!
//! | kind | written | compared |
//! |---|---|---|
//! | PostgreSQL LSN | `16/B374D848` (two hex halves) | numerically, as a 64-bit number |
//! | restore point | a `pg_create_restore_point` name | not ordered; recorded and shown |
//! | Litestream TXID | 16 hex digits (Litestream 0.5) | numerically |
//! | MongoDB oplog timestamp | `Timestamp(1764000000, 3)` or `1764000000:3` | by seconds, then increment |
//!
//! Within an environment, LSNs, TXIDs and oplog timestamps never go
//! backwards.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A PostgreSQL write-ahead-log position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl std::str::FromStr for Lsn {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(format!(
                "LSN {} is not of the form 16/B374D848 (hex/hex)",
                crate::error::shown(text)
            ))
        };
        let (hi, lo) = text.split_once('/').ok_or_else(bad)?;
        let hex = |s: &str| {
            if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                None
            } else {
                u32::from_str_radix(s, 16).ok()
            }
        };
        let (hi, lo) = (hex(hi).ok_or_else(bad)?, hex(lo).ok_or_else(bad)?);
        Ok(Self((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    /// PostgreSQL's own spelling: upper-case hex halves without padding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A Litestream transaction id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Txid(pub u64);

impl std::str::FromStr for Txid {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(format!(
                "Litestream TXID {} is not up to 16 hex digits (e.g. 0000000000000003)",
                crate::error::shown(text)
            )));
        }
        u64::from_str_radix(text, 16).map(Self).map_err(|_| {
            Error::invalid(format!(
                "Litestream TXID {} is out of range",
                crate::error::shown(text)
            ))
        })
    }
}

impl fmt::Display for Txid {
    /// Litestream's spelling: 16 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A MongoDB oplog timestamp: seconds since the epoch and the ordinal of
/// the operation within that second (BSON `Timestamp(t, i)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OplogTs {
    pub seconds: u32,
    pub increment: u32,
}

impl OplogTs {
    /// The order-preserving number: seconds in the high half.
    pub fn value(self) -> u64 {
        (u64::from(self.seconds) << 32) | u64::from(self.increment)
    }

    /// From [`Self::value`].
    pub fn from_value(v: u64) -> Self {
        Self {
            seconds: (v >> 32) as u32,
            increment: (v & 0xFFFF_FFFF) as u32,
        }
    }
}

impl std::str::FromStr for OplogTs {
    type Err = Error;

    /// `Timestamp(1764000000, 3)` (as mongosh prints it) or `1764000000:3`
    /// (as `--oplogLimit` takes it).
    fn from_str(text: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(format!(
                "MongoDB oplog timestamp {} is not Timestamp(SECONDS, INCREMENT) or \
                 SECONDS:INCREMENT (e.g. Timestamp(1764000000, 3))",
                crate::error::shown(text)
            ))
        };
        let t = text.trim();
        let inner = t
            .strip_prefix("Timestamp(")
            .and_then(|r| r.strip_suffix(')'));
        let (s, i) = match inner {
            Some(inner) => {
                // mongosh also prints Timestamp({ t: 1764000000, i: 3 }).
                let inner = inner
                    .trim()
                    .strip_prefix('{')
                    .and_then(|r| r.strip_suffix('}'))
                    .map_or_else(
                        || inner.to_owned(),
                        |r| r.replacen("t:", "", 1).replacen("i:", "", 1),
                    );
                let (s, i) = inner.split_once(',').ok_or_else(bad)?;
                (s.trim().to_owned(), i.trim().to_owned())
            }
            None => {
                let (s, i) = t.split_once(':').ok_or_else(bad)?;
                (s.to_owned(), i.to_owned())
            }
        };
        let num = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                s.parse::<u32>().ok()
            }
        };
        Ok(Self {
            seconds: num(&s).ok_or_else(bad)?,
            increment: num(&i).ok_or_else(bad)?,
        })
    }
}

impl fmt::Display for OplogTs {
    /// mongosh's spelling.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}, {})", self.seconds, self.increment)
    }
}

/// A database position recorded with a pin (as stored in the log).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DbPosition {
    PostgresLsn { lsn: String },
    RestorePoint { name: String },
    LitestreamTxid { txid: String },
    MongoOplogTs { ts: String },
}

/// The numeric positions that can be searched, with the index tag for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ordered {
    Lsn(Lsn),
    Txid(Txid),
    Oplog(OplogTs),
}

impl Ordered {
    /// One byte naming the kind, for index keys.
    pub fn tag(self) -> u8 {
        match self {
            Ordered::Lsn(_) => b'l',
            Ordered::Txid(_) => b'x',
            Ordered::Oplog(_) => b'o',
        }
    }

    /// The position as a number (order-preserving).
    pub fn value(self) -> u64 {
        match self {
            Ordered::Lsn(l) => l.0,
            Ordered::Txid(t) => t.0,
            Ordered::Oplog(o) => o.value(),
        }
    }

    /// How the kind is named in messages.
    pub fn kind(self) -> &'static str {
        match self {
            Ordered::Lsn(_) => "LSN",
            Ordered::Txid(_) => "Litestream TXID",
            Ordered::Oplog(_) => "MongoDB oplog timestamp",
        }
    }
}

impl fmt::Display for Ordered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ordered::Lsn(l) => l.fmt(f),
            Ordered::Txid(t) => t.fmt(f),
            Ordered::Oplog(o) => o.fmt(f),
        }
    }
}

impl DbPosition {
    /// Builds a position from its kind and text, canonicalizing it.
    ///
    /// # Errors
    /// Invalid for malformed values.
    pub fn lsn(text: &str) -> Result<Self> {
        Ok(Self::PostgresLsn {
            lsn: text.trim().parse::<Lsn>()?.to_string(),
        })
    }

    /// A named restore point.
    ///
    /// # Errors
    /// Invalid for an empty, over-long or non-printable name.
    pub fn restore_point(name: &str) -> Result<Self> {
        // PostgreSQL limits restore point names to 63 bytes (NAMEDATALEN - 1).
        if name.is_empty() || name.len() > 63 || name.chars().any(char::is_control) {
            return Err(Error::invalid(format!(
                "restore point name {name:?} must be 1 to 63 printable bytes"
            )));
        }
        Ok(Self::RestorePoint {
            name: name.to_owned(),
        })
    }

    /// A Litestream TXID.
    ///
    /// # Errors
    /// Invalid for malformed values.
    pub fn txid(text: &str) -> Result<Self> {
        Ok(Self::LitestreamTxid {
            txid: text.trim().parse::<Txid>()?.to_string(),
        })
    }

    /// A MongoDB oplog timestamp.
    ///
    /// # Errors
    /// Invalid for malformed values.
    pub fn oplog_ts(text: &str) -> Result<Self> {
        Ok(Self::MongoOplogTs {
            ts: text.parse::<OplogTs>()?.to_string(),
        })
    }

    /// The searchable numeric form, if the kind is ordered.
    ///
    /// # Errors
    /// Invalid when a stored value does not parse.
    pub fn ordered(&self) -> Result<Option<Ordered>> {
        Ok(match self {
            DbPosition::PostgresLsn { lsn } => Some(Ordered::Lsn(lsn.parse()?)),
            DbPosition::LitestreamTxid { txid } => Some(Ordered::Txid(txid.parse()?)),
            DbPosition::MongoOplogTs { ts } => Some(Ordered::Oplog(ts.parse()?)),
            DbPosition::RestorePoint { .. } => None,
        })
    }

    /// Re-validates a position read from the wire or the log.
    ///
    /// # Errors
    /// Invalid for malformed values.
    pub fn validated(self) -> Result<Self> {
        match &self {
            DbPosition::PostgresLsn { lsn } => Self::lsn(lsn),
            DbPosition::RestorePoint { name } => Self::restore_point(name),
            DbPosition::LitestreamTxid { txid } => Self::txid(txid),
            DbPosition::MongoOplogTs { ts } => Self::oplog_ts(ts),
        }
    }
}

impl fmt::Display for DbPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbPosition::PostgresLsn { lsn } => write!(f, "LSN {lsn}"),
            DbPosition::RestorePoint { name } => write!(f, "restore point {name}"),
            DbPosition::LitestreamTxid { txid } => write!(f, "Litestream TXID {txid}"),
            DbPosition::MongoOplogTs { ts } => write!(f, "MongoDB oplog {ts}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oplog_timestamps_parse_in_every_spelling_and_order_by_seconds_then_increment() {
        let a: OplogTs = "Timestamp(1764000000, 3)".parse().unwrap();
        assert_eq!(a, "1764000000:3".parse().unwrap());
        assert_eq!(a, "Timestamp({ t: 1764000000, i: 3 })".parse().unwrap());
        let b: OplogTs = "1764000000:12".parse().unwrap();
        let c: OplogTs = "1764000001:0".parse().unwrap();
        assert!(a < b && b < c);
        assert!(a.value() < b.value() && b.value() < c.value());
        assert_eq!(OplogTs::from_value(b.value()), b);
        assert_eq!(a.to_string(), "Timestamp(1764000000, 3)");
        for bad in [
            "",
            "17640:",
            ":3",
            "Timestamp(1, )",
            "-1:2",
            "1.5:2",
            "99999999999:1",
        ] {
            assert!(bad.parse::<OplogTs>().is_err(), "{bad:?}");
        }
        let p = DbPosition::oplog_ts("1764000000:3").unwrap();
        assert_eq!(p.ordered().unwrap(), Some(Ordered::Oplog(a)));
        assert_eq!(p.to_string(), "MongoDB oplog Timestamp(1764000000, 3)");
        // As the log stores it.
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"mongo_oplog_ts","ts":"Timestamp(1764000000, 3)"}"#
        );
        assert_eq!(serde_json::from_str::<DbPosition>(&json).unwrap(), p);
    }

    #[test]
    fn lsns_compare_numerically_not_as_text() {
        let a: Lsn = "0/16B3748".parse().unwrap();
        let b: Lsn = "0/9000000".parse().unwrap();
        let c: Lsn = "1/0".parse().unwrap();
        // As text "0/9000000" sorts after "0/16B3748"; as numbers too, but
        // "0/16B3748" vs "0/9" shows the difference.
        assert!(a.0 == 0x16B_3748 && b.0 == 0x900_0000);
        assert!(a < b && b < c);
        let nine: Lsn = "0/9".parse().unwrap();
        assert!(
            "0/9" > "0/16B3748" && nine < a,
            "text order and numeric order differ"
        );
        assert_eq!(a.to_string(), "0/16B3748");
        assert_eq!(
            "16/b374d848".parse::<Lsn>().unwrap().to_string(),
            "16/B374D848"
        );
        for bad in ["", "16", "16/", "/1", "G/1", "123456789/0", "1/2/3"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn txids_are_sixteen_hex_digits() {
        let t: Txid = "3".parse().unwrap();
        assert_eq!(t.to_string(), "0000000000000003");
        assert!("xyz".parse::<Txid>().is_err());
        assert!("11111111111111111".parse::<Txid>().is_err());
    }

    #[test]
    fn positions_round_trip_through_the_log_form() {
        for p in [
            DbPosition::lsn("0/16b3748").unwrap(),
            DbPosition::txid("2a").unwrap(),
            DbPosition::restore_point("before-migration-42").unwrap(),
        ] {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<DbPosition>(&json).unwrap(), p);
        }
        assert!(DbPosition::restore_point("").is_err());
        assert!(DbPosition::restore_point(&"x".repeat(64)).is_err());
    }
}
