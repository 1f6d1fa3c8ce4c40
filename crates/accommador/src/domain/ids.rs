//! Prefixed, time-sortable identifiers (`usr_01J…`, `evt_01J…`, `org_01J…`): a ULID after a
//! prefix that names the kind of object, so an ID pasted in the wrong place is obvious.

use ulid::Ulid;

pub const ORG: &str = "org_";
pub const USER: &str = "usr_";
pub const EVENT: &str = "evt_";
pub const API_KEY: &str = "key_";
pub const ENDPOINT: &str = "ep_";
pub const DELIVERY: &str = "dlv_";

/// A new ID with the given prefix.
pub fn new_id(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 26);
    s.push_str(prefix);
    s.push_str(&Ulid::generate().to_string());
    s
}

/// When the ID with this prefix was made (its ULID's millisecond time); `None` for anything
/// that is not such an ID.
pub fn time_of(id: &str, prefix: &str) -> Option<super::Timestamp> {
    let ulid = Ulid::from_string(id.strip_prefix(prefix)?).ok()?;
    i64::try_from(ulid.timestamp_ms())
        .ok()
        .map(super::Timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_prefix_and_a_ulid() {
        let id = new_id(USER);
        assert!(id.starts_with("usr_"));
        assert_eq!(id.len(), 30);
        assert!(Ulid::from_string(&id[4..]).is_ok());
    }

    #[test]
    fn an_id_tells_when_it_was_made() {
        let before = super::super::Timestamp::now();
        let id = new_id(EVENT);
        let t = time_of(&id, EVENT).unwrap();
        assert!(t >= before && t <= super::super::Timestamp::now());
        assert_eq!(time_of(&id, USER), None);
        assert_eq!(time_of("evt_not-a-ulid", EVENT), None);
    }
}
