//! Backup ids: `backup-YYYYmmddHHMMSSffffff`, the reference charm's format (it used local time; we
//! use UTC). The id sorts by creation time, which listing and retention rely on.

use std::fmt;
use std::str::FromStr;

use time::{OffsetDateTime, PrimitiveDateTime};

const PREFIX: &str = "backup-";
const DIGITS: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupId(String);

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a backup-id (expected backup-YYYYmmddHHMMSSffffff)")]
pub struct InvalidBackupId(String);

impl BackupId {
    /// A new id for a backup made now.
    pub fn now() -> Self {
        Self::at(OffsetDateTime::now_utc())
    }

    pub fn at(t: OffsetDateTime) -> Self {
        let t = t.to_offset(time::UtcOffset::UTC);
        BackupId(format!(
            "{PREFIX}{:04}{:02}{:02}{:02}{:02}{:02}{:06}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The time written in the id (UTC for ours, the creator's local time for the reference charm's).
    pub fn timestamp(&self) -> Option<OffsetDateTime> {
        let d = &self.0[PREFIX.len()..];
        let num = |r: std::ops::Range<usize>| d[r].parse::<u32>().ok();
        let date = time::Date::from_calendar_date(
            num(0..4)? as i32,
            time::Month::try_from(num(4..6)? as u8).ok()?,
            num(6..8)? as u8,
        )
        .ok()?;
        let t =
            time::Time::from_hms_micro(num(8..10)? as u8, num(10..12)? as u8, num(12..14)? as u8, num(14..20)?).ok()?;
        Some(PrimitiveDateTime::new(date, t).assume_utc())
    }
}

impl FromStr for BackupId {
    type Err = InvalidBackupId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix(PREFIX).unwrap_or("");
        if digits.len() == DIGITS && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(BackupId(s.to_owned()))
        } else {
            Err(InvalidBackupId(s.to_owned()))
        }
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_its_time() {
        let t = time::macros::datetime!(2024-02-06 15:30:12.123456 UTC);
        let id = BackupId::at(t);
        assert_eq!(id.as_str(), "backup-20240206153012123456");
        assert_eq!(id.timestamp(), Some(t));
        assert_eq!(id.as_str().parse::<BackupId>().ok(), Some(id));
    }

    #[test]
    fn refuses_what_is_not_an_id() {
        for s in [
            "backup-",
            "backup-2024",
            "x-20240206153012123456",
            "backup-2024020615301212345a",
            "backup-20240206153012123456/x",
        ] {
            assert!(s.parse::<BackupId>().is_err(), "{s}");
        }
    }
}
