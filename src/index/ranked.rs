//! An ordered set with positional access (an order-statistic treap): insert, remove and
//! membership in O(log n), and the `take` keys from position `skip` in O(log n + take), so a
//! list page at any depth costs the same. It owns ordering and positions only; it does not
//! know what the keys stand for (the mirror does).
//!
//! `std::collections::BTreeSet` orders but cannot start a walk at the k-th key without
//! walking the k before it; every node here carries the size of its subtree, so a descent
//! finds the k-th key directly. Node priorities come from a SplitMix64 sequence private to
//! each set (deterministic, no `rand`): they do not depend on the keys, so no key order can
//! unbalance the tree. The expected depth is about 2·ln n (~28 for a million keys), which
//! bounds the recursion of insert and remove.

use std::cmp::Ordering;

type Link<K> = Option<Box<Node<K>>>;

#[derive(Debug, Clone)]
struct Node<K> {
    key: K,
    /// Heap order: a parent's priority is at least its children's.
    priority: u64,
    /// Keys in this subtree, the node included: what positional access descends by.
    size: usize,
    left: Link<K>,
    right: Link<K>,
}

impl<K> Node<K> {
    fn resize(&mut self) {
        self.size = 1 + size(&self.left) + size(&self.right);
    }
}

fn size<K>(link: &Link<K>) -> usize {
    link.as_ref().map_or(0, |n| n.size)
}

/// An ordered set of distinct keys that can also slice by position; see the module docs.
#[derive(Debug, Clone)]
pub(super) struct Ranked<K> {
    root: Link<K>,
    /// State of the priority sequence.
    seed: u64,
}

impl<K: Ord> Default for Ranked<K> {
    /// An empty set.
    fn default() -> Self {
        Self {
            root: None,
            seed: 0x853c_49e6_748f_ea9b,
        }
    }
}

impl<K: Ord> Ranked<K> {
    /// How many keys the set holds (O(1)): a partition's `total`.
    pub(super) fn len(&self) -> usize {
        size(&self.root)
    }

    /// Whether `key` is in the set.
    pub(super) fn contains(&self, key: &K) -> bool {
        let mut node = self.root.as_deref();
        while let Some(n) = node {
            node = match key.cmp(&n.key) {
                Ordering::Less => n.left.as_deref(),
                Ordering::Greater => n.right.as_deref(),
                Ordering::Equal => return true,
            };
        }
        false
    }

    /// Adds `key`; false (and no change) if it was already there.
    pub(super) fn insert(&mut self, key: K) -> bool {
        if self.contains(&key) {
            return false;
        }
        let priority = self.next_priority();
        let node = Box::new(Node {
            key,
            priority,
            size: 1,
            left: None,
            right: None,
        });
        insert(&mut self.root, node);
        true
    }

    /// Removes `key`; false if it was not there.
    pub(super) fn remove(&mut self, key: &K) -> bool {
        remove(&mut self.root, key)
    }

    /// The keys at positions `skip..skip + take` in order (fewer at the end, none past it).
    pub(super) fn range(&self, skip: usize, take: usize) -> Iter<'_, K> {
        let mut stack = Vec::new();
        let mut node = self.root.as_deref();
        let mut skip = skip;
        // Descend to the key at position `skip`, stacking the nodes still to come after it.
        while let Some(n) = node {
            let before = size(&n.left);
            match skip.cmp(&before) {
                Ordering::Less => {
                    stack.push(n);
                    node = n.left.as_deref();
                }
                Ordering::Equal => {
                    stack.push(n);
                    break;
                }
                Ordering::Greater => {
                    skip -= before + 1;
                    node = n.right.as_deref();
                }
            }
        }
        Iter { stack, left: take }
    }

    fn next_priority(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Inserts a key known to be absent: down the search path while the new node's priority
/// is lower, then it takes the place of the subtree there, split around its key.
fn insert<K: Ord>(link: &mut Link<K>, mut node: Box<Node<K>>) {
    let take_place = link.as_ref().is_none_or(|n| node.priority > n.priority);
    if take_place {
        let (left, right) = split(link.take(), &node.key);
        node.left = left;
        node.right = right;
        node.resize();
        *link = Some(node);
    } else if let Some(n) = link {
        n.size += 1;
        if node.key < n.key {
            insert(&mut n.left, node);
        } else {
            insert(&mut n.right, node);
        }
    }
}

fn remove<K: Ord>(link: &mut Link<K>, key: &K) -> bool {
    let Some(n) = link else {
        return false;
    };
    let removed = match key.cmp(&n.key) {
        Ordering::Less => remove(&mut n.left, key),
        Ordering::Greater => remove(&mut n.right, key),
        Ordering::Equal => {
            let (left, right) = (n.left.take(), n.right.take());
            *link = merge(left, right);
            return true;
        }
    };
    if removed {
        n.size -= 1;
    }
    removed
}

/// Splits a subtree into the keys below `key` and the keys above it (`key` is absent).
fn split<K: Ord>(link: Link<K>, key: &K) -> (Link<K>, Link<K>) {
    let Some(mut n) = link else {
        return (None, None);
    };
    if n.key < *key {
        let (left, right) = split(n.right.take(), key);
        n.right = left;
        n.resize();
        (Some(n), right)
    } else {
        let (left, right) = split(n.left.take(), key);
        n.left = right;
        n.resize();
        (left, Some(n))
    }
}

/// Joins two subtrees where every key of `a` is below every key of `b`.
fn merge<K>(a: Link<K>, b: Link<K>) -> Link<K> {
    match (a, b) {
        (None, b) => b,
        (a, None) => a,
        (Some(mut a), Some(mut b)) => {
            if a.priority >= b.priority {
                a.right = merge(a.right.take(), Some(b));
                a.resize();
                Some(a)
            } else {
                b.left = merge(Some(a), b.left.take());
                b.resize();
                Some(b)
            }
        }
    }
}

/// In-order walk from a position, at most `left` more keys: each step pops the next node
/// and stacks the left spine of its right subtree, O(1) amortized.
#[derive(Debug)]
pub(super) struct Iter<'a, K> {
    stack: Vec<&'a Node<K>>,
    left: usize,
}

impl<'a, K> Iterator for Iter<'a, K> {
    type Item = &'a K;

    fn next(&mut self) -> Option<&'a K> {
        if self.left == 0 {
            return None;
        }
        let n = self.stack.pop()?;
        self.left -= 1;
        let mut next = n.right.as_deref();
        while let Some(m) = next {
            self.stack.push(m);
            next = m.left.as_deref();
        }
        Some(&n.key)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Checks the search-tree order, the heap order and every subtree size.
    fn check<K: Ord + Copy>(link: &Link<K>, lo: Option<K>, hi: Option<K>) -> usize {
        let Some(n) = link else { return 0 };
        assert!(lo.is_none_or(|lo| lo < n.key) && hi.is_none_or(|hi| n.key < hi));
        for child in [&n.left, &n.right].into_iter().flatten() {
            assert!(child.priority <= n.priority, "heap order");
        }
        let size = 1 + check(&n.left, lo, Some(n.key)) + check(&n.right, Some(n.key), hi);
        assert_eq!(n.size, size, "subtree size");
        size
    }

    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn agrees_with_a_btreeset_under_random_inserts_and_removes() {
        let mut rng = Rng(7);
        let mut ours = Ranked::default();
        let mut model = BTreeSet::new();
        for step in 0..20_000 {
            let key = rng.below(2_000);
            if rng.below(3) == 0 {
                assert_eq!(ours.remove(&key), model.remove(&key));
            } else {
                assert_eq!(ours.insert(key), model.insert(key));
            }
            assert_eq!(ours.len(), model.len());
            if step % 500 == 0 {
                assert_eq!(check(&ours.root, None, None), model.len());
                let skip = usize::try_from(rng.below(model.len() as u64 + 5)).unwrap();
                let take = usize::try_from(rng.below(250)).unwrap();
                let got: Vec<u64> = ours.range(skip, take).copied().collect();
                let want: Vec<u64> = model.iter().skip(skip).take(take).copied().collect();
                assert_eq!(got, want, "range({skip}, {take})");
            }
        }
        assert!(ours.range(0, usize::MAX).copied().eq(model.iter().copied()));
        for k in 0..2_000 {
            assert_eq!(ours.contains(&k), model.contains(&k));
        }
    }

    #[test]
    fn ranges_at_the_edges() {
        let mut set = Ranked::default();
        assert_eq!(set.range(0, 10).count(), 0);
        for k in (0..100u32).rev() {
            set.insert(k);
        }
        assert_eq!(set.range(0, 3).copied().collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(set.range(98, 10).copied().collect::<Vec<_>>(), [98, 99]);
        assert_eq!(set.range(100, 10).count(), 0);
        assert_eq!(set.range(usize::MAX, usize::MAX).count(), 0);
        assert_eq!(set.range(5, 0).count(), 0);
        assert!(!set.insert(5));
        assert!(set.remove(&5) && !set.remove(&5));
        assert_eq!(set.range(4, 2).copied().collect::<Vec<_>>(), [4, 6]);
    }

    #[test]
    fn sorted_inserts_stay_shallow() {
        fn depth<K>(link: &Link<K>) -> usize {
            link.as_ref()
                .map_or(0, |n| 1 + depth(&n.left).max(depth(&n.right)))
        }
        let mut set = Ranked::default();
        for k in 0..100_000u32 {
            set.insert(k);
        }
        // ln(100 000) ≈ 11.5: a degenerate (list-like) tree would be 100 000 deep.
        assert!(depth(&set.root) < 60, "depth {}", depth(&set.root));
    }
}
