//! Sharing bounded room between lanes (one per endpoint) fairly: one unit at a time to each
//! lane in turn, within each lane's cap and its organization's room. The dispatcher shares
//! free slots and lease-ahead this way, and PostgreSQL leasing an organization's room across
//! instances, so a few lanes never take an organization's whole room.

use std::collections::HashMap;

/// Units of `total` handed out one at a time to lanes in turn (lane `i` takes at most
/// `caps[i]`, and all lanes of organization `orgs[i]` together at most its `org_room`), until
/// `total`, the rooms or the caps run out. What each lane got, in order.
pub fn take_in_turns(
    caps: &[usize],
    orgs: &[String],
    org_room: &mut HashMap<String, usize>,
    total: &mut usize,
) -> Vec<usize> {
    let mut got = vec![0; caps.len()];
    loop {
        let mut gave = false;
        for (i, cap) in caps.iter().enumerate() {
            if *total == 0 {
                return got;
            }
            let Some(room) = org_room.get_mut(&orgs[i]) else {
                continue;
            };
            if got[i] < *cap && *room > 0 {
                got[i] += 1;
                *room -= 1;
                *total -= 1;
                gave = true;
            }
        }
        if !gave {
            return got;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::take_in_turns;

    fn rooms(a: usize, b: usize) -> HashMap<String, usize> {
        HashMap::from([("a".to_owned(), a), ("b".to_owned(), b)])
    }

    #[test]
    fn slots_go_to_lanes_in_turn_within_their_organizations_room() {
        let orgs: Vec<String> = ["a", "a", "a", "b"].map(str::to_owned).to_vec();
        // Organization a has room for 4, b for 16; 16 slots in all; each lane could take 16.
        let (mut room, mut total) = (rooms(4, 16), 16);
        let got = take_in_turns(&[16, 16, 16, 16], &orgs, &mut room, &mut total);
        // a's room is shared by its three lanes (not all of it to the first); b takes the rest.
        assert_eq!(got, vec![2, 1, 1, 12]);
        assert_eq!((room["a"], room["b"], total), (0, 4, 0));
        // Each lane's cap holds.
        let (mut room, mut total) = (rooms(64, 64), 100);
        let got = take_in_turns(&[1, 0, 1, 1], &orgs, &mut room, &mut total);
        assert_eq!(got, vec![1, 0, 1, 1]);
        assert_eq!(total, 97);
    }
}
