//! Partition assignment for consumer groups, computed on the broker: pure functions from the
//! members' subscriptions, the topics' partition counts and (for the sticky assignor) the
//! previous assignment, to each member's partitions.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// A topic partition.
pub type TopicPartition = (String, u32);

/// How a group's partitions are dealt to its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Assignor {
    /// Per topic, contiguous ranges of partitions to members in member order (Kafka's default).
    #[default]
    Range,
    /// All partitions, in order, dealt to members in turn.
    RoundRobin,
    /// Keeps each partition where it was when that is still fair, and moves only what must
    /// move to rebalance; members keep consuming what they keep during a rebalance.
    CooperativeSticky,
}

impl std::str::FromStr for Assignor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "range" => Ok(Assignor::Range),
            "round-robin" | "roundrobin" => Ok(Assignor::RoundRobin),
            "cooperative-sticky" => Ok(Assignor::CooperativeSticky),
            other => Err(format!(
                "unknown assignor {other:?}: use range, round-robin or cooperative-sticky"
            )),
        }
    }
}

/// A member as the assignor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSubscription {
    pub member_id: String,
    pub topics: BTreeSet<String>,
    /// What it owned before this rebalance (used by the sticky assignor).
    pub owned: Vec<TopicPartition>,
}

/// Assigns every partition of every subscribed topic to exactly one member subscribed to it.
/// Topics missing from `partitions` (unknown or deleted) get no assignment.
pub fn assign(
    assignor: Assignor,
    members: &[MemberSubscription],
    partitions: &BTreeMap<String, u32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut members: Vec<&MemberSubscription> = members.iter().collect();
    members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    let mut out: BTreeMap<String, Vec<TopicPartition>> = members
        .iter()
        .map(|m| (m.member_id.clone(), Vec::new()))
        .collect();
    match assignor {
        Assignor::Range => {
            for (topic, &n) in partitions {
                let subscribers: Vec<&&MemberSubscription> = members
                    .iter()
                    .filter(|m| m.topics.contains(topic))
                    .collect();
                if subscribers.is_empty() {
                    continue;
                }
                let per = n as usize / subscribers.len();
                let extra = n as usize % subscribers.len();
                let mut next = 0u32;
                for (i, member) in subscribers.iter().enumerate() {
                    let count = per + usize::from(i < extra);
                    let list = out.get_mut(&member.member_id).expect("member listed");
                    for p in next..next + count as u32 {
                        list.push((topic.clone(), p));
                    }
                    next += count as u32;
                }
            }
        }
        Assignor::RoundRobin => {
            let mut turn = 0usize;
            for (topic, &n) in partitions {
                for p in 0..n {
                    // The next member in turn that subscribes to this topic.
                    for step in 0..members.len() {
                        let member = members[(turn + step) % members.len()];
                        if member.topics.contains(topic) {
                            out.get_mut(&member.member_id)
                                .expect("member listed")
                                .push((topic.clone(), p));
                            turn = (turn + step + 1) % members.len();
                            break;
                        }
                    }
                }
            }
        }
        Assignor::CooperativeSticky => sticky(&members, partitions, &mut out),
    }
    out
}

fn sticky(
    members: &[&MemberSubscription],
    partitions: &BTreeMap<String, u32>,
    out: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    if members.is_empty() {
        return;
    }
    let all: Vec<TopicPartition> = partitions
        .iter()
        .filter(|(topic, _)| members.iter().any(|m| m.topics.contains(*topic)))
        .flat_map(|(topic, &n)| (0..n).map(move |p| (topic.clone(), p)))
        .collect();
    let eligible = |member: &MemberSubscription, tp: &TopicPartition| member.topics.contains(&tp.0);
    // Quotas: everyone gets floor(total / members); the first `extra` members by current load
    // may hold one more. (Exact when all members subscribe to the same topics.)
    let floor = all.len() / members.len();
    let mut n_ceil = all.len() % members.len();
    let mut owner: HashMap<TopicPartition, String> = HashMap::new();
    // Keep previous ownership where still valid, heaviest claims trimmed to the quota.
    let mut by_load: Vec<&&MemberSubscription> = members.iter().collect();
    by_load.sort_by_key(|m| std::cmp::Reverse(m.owned.len()));
    for member in by_load {
        let mut kept: Vec<TopicPartition> = member
            .owned
            .iter()
            .filter(|tp| {
                partitions.get(&tp.0).is_some_and(|&n| tp.1 < n)
                    && eligible(member, tp)
                    && !owner.contains_key(*tp)
            })
            .cloned()
            .collect();
        kept.sort();
        let quota = if n_ceil > 0 && kept.len() > floor {
            n_ceil -= 1;
            floor + 1
        } else {
            floor
        };
        kept.truncate(quota);
        for tp in kept {
            owner.insert(tp.clone(), member.member_id.clone());
            out.get_mut(&member.member_id)
                .expect("member listed")
                .push(tp);
        }
    }
    // Deal what is left to the least loaded eligible members.
    for tp in all {
        if owner.contains_key(&tp) {
            continue;
        }
        let target = members
            .iter()
            .filter(|m| eligible(m, &tp))
            .min_by_key(|m| (out[&m.member_id].len(), m.member_id.clone()));
        if let Some(member) = target {
            out.get_mut(&member.member_id)
                .expect("member listed")
                .push(tp.clone());
            owner.insert(tp, member.member_id.clone());
        }
    }
    for list in out.values_mut() {
        list.sort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: &str, topics: &[&str], owned: &[(&str, u32)]) -> MemberSubscription {
        MemberSubscription {
            member_id: id.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            owned: owned.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
        }
    }

    fn counts(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    #[test]
    fn range_gives_contiguous_ranges_per_topic() {
        let members = [
            member("a", &["t"], &[]),
            member("b", &["t"], &[]),
            member("c", &["t"], &[]),
        ];
        let out = assign(Assignor::Range, &members, &counts(&[("t", 7)]));
        assert_eq!(
            out["a"],
            vec![("t".into(), 0), ("t".into(), 1), ("t".into(), 2)]
        );
        assert_eq!(out["b"], vec![("t".into(), 3), ("t".into(), 4)]);
        assert_eq!(out["c"], vec![("t".into(), 5), ("t".into(), 6)]);
    }

    #[test]
    fn round_robin_deals_in_turn_and_respects_subscriptions() {
        let members = [member("a", &["t", "u"], &[]), member("b", &["t"], &[])];
        let out = assign(
            Assignor::RoundRobin,
            &members,
            &counts(&[("t", 4), ("u", 2)]),
        );
        assert_eq!(out["a"].len() + out["b"].len(), 6);
        assert!(out["b"].iter().all(|(t, _)| t == "t"));
        assert_eq!(out["a"].iter().filter(|(t, _)| t == "u").count(), 2);
    }

    #[test]
    fn cooperative_sticky_moves_only_what_it_must() {
        // Three members share six partitions; one leaves: only its two partitions move.
        let before = [
            member("a", &["t"], &[("t", 0), ("t", 1)]),
            member("b", &["t"], &[("t", 2), ("t", 3)]),
        ];
        let out = assign(Assignor::CooperativeSticky, &before, &counts(&[("t", 6)]));
        assert!(out["a"].contains(&("t".into(), 0)) && out["a"].contains(&("t".into(), 1)));
        assert!(out["b"].contains(&("t".into(), 2)) && out["b"].contains(&("t".into(), 3)));
        assert_eq!(out["a"].len(), 3);
        // A newcomer takes one partition from each, nothing else moves.
        let joined = [
            member("a", &["t"], &[("t", 0), ("t", 1), ("t", 4)]),
            member("b", &["t"], &[("t", 2), ("t", 3), ("t", 5)]),
            member("c", &["t"], &[]),
        ];
        let out2 = assign(Assignor::CooperativeSticky, &joined, &counts(&[("t", 6)]));
        assert_eq!(out2["c"].len(), 2);
        let moved = joined
            .iter()
            .flat_map(|m| {
                m.owned
                    .iter()
                    .map(move |tp| (m.member_id.clone(), tp.clone()))
            })
            .filter(|(id, tp)| !out2[id].contains(tp))
            .count();
        assert_eq!(moved, 2);
    }

    proptest! {
        #[test]
        fn every_assignor_assigns_each_partition_once_and_fairly(
            n_members in 1usize..6,
            n_partitions in 0u32..20,
            owned_seed in proptest::collection::vec(0usize..6, 0..20),
        ) {
            let ids: Vec<String> = (0..n_members).map(|i| format!("m{i}")).collect();
            let members: Vec<MemberSubscription> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| MemberSubscription {
                    member_id: id.clone(),
                    topics: ["t".to_string()].into(),
                    owned: owned_seed
                        .iter()
                        .enumerate()
                        .filter(|(_, &m)| m == i)
                        .map(|(p, _)| ("t".to_string(), p as u32))
                        .collect(),
                })
                .collect();
            for assignor in [Assignor::Range, Assignor::RoundRobin, Assignor::CooperativeSticky] {
                let out = assign(assignor, &members, &counts(&[("t", n_partitions)]));
                let mut all: Vec<&TopicPartition> = out.values().flatten().collect();
                all.sort();
                prop_assert_eq!(all.len(), n_partitions as usize, "{:?}", assignor);
                all.dedup();
                prop_assert_eq!(all.len(), n_partitions as usize, "{:?} assigned a partition twice", assignor);
                let loads: Vec<usize> = out.values().map(Vec::len).collect();
                let spread = loads.iter().max().unwrap() - loads.iter().min().unwrap();
                prop_assert!(spread <= 1, "{:?} unbalanced: {:?}", assignor, loads);
            }
        }
    }
}
