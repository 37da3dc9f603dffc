//! std collections with `ShardAlloc` as the global allocator: `Vec` growth and shrinking,
//! over-aligned elements, `String`, `HashMap`, `BTreeMap`, `HashSet`, `BinaryHeap`, `VecDeque`,
//! `LinkedList`, `Box<dyn Trait>` of many sizes and alignments, `Rc`/`Weak`, `Arc` across threads,
//! sorting big vectors, `vec![0; n]` (zeroed allocation over dirty memory) and `try_reserve`
//! failing cleanly on impossible sizes. Every structure's contents are checked against values
//! computed independently.
//!
//! Randomized parts print their seed; replay with `SHARDALLOC_SEED=<seed> cargo test --test
//! collections <name> -- --exact`. `SHARDALLOC_TEST_SCALE=<k>` multiplies the sizes.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, LinkedList, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

/// A cheap, well-mixed function of `i` (splitmix64), used as the expected value at index `i`.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn vec_growth_and_shrink() {
    let n = 400_000 * common::scale();
    let mut v: Vec<u64> = Vec::new();
    for i in 0..n as u64 {
        v.push(mix(i));
    }
    for (i, &x) in v.iter().enumerate() {
        assert_eq!(x, mix(i as u64), "element {i} after growth");
    }
    // Shrink through realloc in several steps; the prefix must survive each one.
    for keep in [n / 2, n / 7, 1000, 3, 1] {
        v.truncate(keep);
        v.shrink_to_fit();
        assert!(v.capacity() >= keep);
        for (i, &x) in v.iter().enumerate() {
            assert_eq!(x, mix(i as u64), "element {i} after shrinking to {keep}");
        }
    }
    // Many small vectors of bytes, each grown one byte at a time, all live at once.
    let mut vs: Vec<Vec<u8>> = (0..2000).map(|_| Vec::new()).collect();
    for round in 0..300u32 {
        for (j, w) in vs.iter_mut().enumerate() {
            if (j as u32 + round).is_multiple_of(3) {
                w.push((j as u32 ^ round) as u8);
            }
        }
    }
    for (j, w) in vs.iter().enumerate() {
        let want: Vec<u8> = (0..300u32)
            .filter(|r| (j as u32 + r).is_multiple_of(3))
            .map(|r| (j as u32 ^ r) as u8)
            .collect();
        assert_eq!(*w, want, "byte vector {j}");
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
#[repr(align(64))]
struct Line(u64);

#[derive(Clone, Copy, PartialEq, Debug)]
#[repr(align(4096))]
struct Page(u64);

#[derive(Clone, Copy, PartialEq, Debug)]
#[repr(align(65536))]
struct Big(u64);

#[test]
fn over_aligned_elements() {
    let mut lines = Vec::new();
    let mut pages = Vec::new();
    let mut bigs = Vec::new();
    for i in 0..3000u64 {
        lines.push(Line(mix(i)));
        if i < 600 {
            pages.push(Page(mix(i + 1)));
        }
        if i < 40 {
            bigs.push(Big(mix(i + 2)));
        }
        assert_eq!(lines.as_ptr().addr() % 64, 0, "Vec<Line> buffer alignment");
        assert_eq!(
            pages.as_ptr().addr() % 4096,
            0,
            "Vec<Page> buffer alignment"
        );
        assert_eq!(bigs.as_ptr().addr() % 65536, 0, "Vec<Big> buffer alignment");
    }
    let boxed: Vec<Box<Page>> = (0..500).map(|i| Box::new(Page(i))).collect();
    for (i, b) in boxed.iter().enumerate() {
        assert_eq!(
            std::ptr::from_ref::<Page>(b).addr() % 4096,
            0,
            "Box<Page> alignment"
        );
        assert_eq!(b.0, i as u64);
    }
    for (i, x) in lines.iter().enumerate() {
        assert_eq!(x.0, mix(i as u64));
    }
    for (i, x) in pages.iter().enumerate() {
        assert_eq!(x.0, mix(i as u64 + 1));
    }
    for (i, x) in bigs.iter().enumerate() {
        assert_eq!(x.0, mix(i as u64 + 2));
    }
    pages.truncate(5);
    pages.shrink_to_fit();
    assert_eq!(
        pages.as_ptr().addr() % 4096,
        0,
        "Vec<Page> alignment after shrink"
    );
    assert_eq!(pages[4].0, mix(5));
}

#[test]
fn strings() {
    let n = 100_000 * common::scale();
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&i.to_string());
        s.push(',');
    }
    let parsed: Vec<usize> = s
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().expect("number"))
        .collect();
    assert_eq!(parsed, (0..n).collect::<Vec<_>>());
    let upper = "straße ünd ñ ".repeat(10_000).to_uppercase();
    assert_eq!(upper.matches("STRASSE ÜND Ñ ").count(), 10_000);
    let words: Vec<String> = (0..50_000).map(|i| format!("w{i:05}")).collect();
    let joined = words.join(" ");
    assert_eq!(joined.len(), 50_000 * 6 + 49_999);
    let back: Vec<&str> = joined.split(' ').collect();
    assert_eq!(back.len(), words.len());
    for (a, b) in back.iter().zip(&words) {
        assert_eq!(a, b);
    }
    // A 16 MiB string built by doubling, then cut back.
    let mut big = String::from("0123456789abcdef");
    while big.len() < 16 << 20 {
        big = big.clone() + &big;
    }
    assert!(big.as_bytes().chunks(16).all(|c| c == b"0123456789abcdef"));
    big.truncate(100);
    big.shrink_to_fit();
    assert_eq!(&big[96..], "0123");
}

#[test]
fn hash_map_and_set() {
    let seed = common::seed("hash_map_and_set");
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = 200_000 * common::scale();
    let keys: Vec<u64> = (0..n).map(|_| rng.random()).collect();
    let mut m: HashMap<u64, String> = HashMap::new();
    for &k in &keys {
        m.insert(k, format!("v{k:x}"));
    }
    let distinct: HashSet<u64> = keys.iter().copied().collect();
    assert_eq!(m.len(), distinct.len(), "seed {seed}");
    for &k in &keys {
        assert_eq!(
            m.get(&k).map(String::as_str),
            Some(&*format!("v{k:x}")),
            "seed {seed}"
        );
    }
    // Remove every other key, then insert new values for them with longer strings.
    for &k in keys.iter().step_by(2) {
        m.remove(&k);
    }
    let odd: HashSet<u64> = keys.iter().skip(1).step_by(2).copied().collect();
    for &k in keys.iter().step_by(2) {
        assert!(
            !m.contains_key(&k) || odd.contains(&k),
            "seed {seed}: {k} not removed"
        );
    }
    assert_eq!(m.len(), odd.len(), "seed {seed}");
    for &k in keys.iter().step_by(2) {
        m.insert(k, format!("{k:064b}"));
    }
    for (i, &k) in keys.iter().enumerate() {
        let v = &m[&k];
        assert!(
            *v == format!("{k:064b}") || (i % 2 == 1 && *v == format!("v{k:x}")),
            "seed {seed}: key {k} has {v:?}"
        );
    }
    m.shrink_to_fit();
    // Strings as keys, vectors as values.
    let mut sm: HashMap<String, Vec<u32>> = HashMap::new();
    for i in 0..50_000u32 {
        sm.entry(format!("k{}", i % 5000)).or_default().push(i);
    }
    assert_eq!(sm.len(), 5000);
    for (k, v) in &sm {
        let r: u32 = k[1..].parse().unwrap();
        assert_eq!(v.len(), 10);
        assert!(v.iter().enumerate().all(|(j, &x)| x == r + 5000 * j as u32));
    }
}

#[test]
fn btree_map() {
    let seed = common::seed("btree_map");
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = 150_000 * common::scale();
    let mut m: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut keys: Vec<u64> = (0..n as u64).map(|i| i * 3).collect();
    keys.shuffle(&mut rng);
    for &k in &keys {
        let len = (k % 97) as usize;
        m.insert(k, vec![(k % 251) as u8; len]);
    }
    assert_eq!(m.len(), n, "seed {seed}");
    for (i, (&k, v)) in m.iter().enumerate() {
        assert_eq!(k, i as u64 * 3, "seed {seed}: keys in order");
        assert_eq!(v.len(), (k % 97) as usize, "seed {seed}");
        assert!(
            v.iter().all(|&b| b == (k % 251) as u8),
            "seed {seed}: value of {k}"
        );
    }
    let lo = 3 * (n as u64 / 4);
    let hi = 3 * (n as u64 / 2);
    assert_eq!(
        m.range(lo..hi).count(),
        n / 4 + usize::from(n % 4 >= 2),
        "seed {seed}"
    );
    // Remove in random order, checking what is left now and then.
    keys.shuffle(&mut rng);
    for (j, &k) in keys.iter().enumerate() {
        let v = m.remove(&k).expect("present");
        assert_eq!(v.len(), (k % 97) as usize, "seed {seed}");
        if j % 10_000 == 0 {
            assert_eq!(m.len(), n - j - 1, "seed {seed}");
        }
    }
    assert!(m.is_empty());
}

trait Shape {
    fn id(&self) -> u64;
    fn check(&self) -> bool;
}

struct Tiny(u8);
struct Medium([u64; 40], u64);
struct Large(Box<[u8]>, u64);
#[repr(align(256))]
struct Aligned(u64);
#[repr(align(8192))]
struct VeryAligned([u64; 3]);

impl Shape for Tiny {
    fn id(&self) -> u64 {
        u64::from(self.0)
    }
    fn check(&self) -> bool {
        true
    }
}
impl Shape for Medium {
    fn id(&self) -> u64 {
        self.1
    }
    fn check(&self) -> bool {
        self.0
            .iter()
            .enumerate()
            .all(|(i, &x)| x == mix(self.1 + i as u64))
    }
}
impl Shape for Large {
    fn id(&self) -> u64 {
        self.1
    }
    fn check(&self) -> bool {
        self.0.iter().all(|&b| b == self.1 as u8)
    }
}
impl Shape for Aligned {
    fn id(&self) -> u64 {
        self.0
    }
    fn check(&self) -> bool {
        std::ptr::from_ref(self).addr().is_multiple_of(256)
    }
}
impl Shape for VeryAligned {
    fn id(&self) -> u64 {
        self.0[1]
    }
    fn check(&self) -> bool {
        std::ptr::from_ref(self).addr().is_multiple_of(8192)
            && self.0 == [!self.0[1], self.0[1], self.0[1] ^ 0x55]
    }
}

fn make_shape(i: u64) -> Box<dyn Shape> {
    match i % 5 {
        0 => Box::new(Tiny(i as u8)),
        1 => Box::new(Medium(std::array::from_fn(|j| mix(i + j as u64)), i)),
        2 => Box::new(Large(vec![i as u8; (i % 70_000) as usize].into(), i)),
        3 => Box::new(Aligned(i)),
        _ => Box::new(VeryAligned([!i, i, i ^ 0x55])),
    }
}

#[test]
fn boxed_trait_objects() {
    let seed = common::seed("boxed_trait_objects");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut shapes: Vec<(u64, Box<dyn Shape>)> = (0..5000).map(|i| (i, make_shape(i))).collect();
    let mut next = 5000;
    for _ in 0..20_000 {
        let j = rng.random_range(0..shapes.len());
        if rng.random_bool(0.5) {
            let (id, s) = shapes.swap_remove(j);
            assert!(s.check(), "seed {seed}: shape {id}");
        } else {
            shapes.push((next, make_shape(next)));
            next += 1;
        }
    }
    for (id, s) in &shapes {
        assert!(s.check(), "seed {seed}: shape {id}");
        let want = if id % 5 == 0 { *id as u8 as u64 } else { *id };
        assert_eq!(s.id(), want, "seed {seed}");
    }
}

#[test]
fn rc_weak_and_arc() {
    // A tree with parent links through Weak.
    struct Node {
        value: u64,
        parent: RefCell<Weak<Node>>,
        children: RefCell<Vec<Rc<Node>>>,
    }
    let root = Rc::new(Node {
        value: 0,
        parent: RefCell::new(Weak::new()),
        children: RefCell::new(Vec::new()),
    });
    let mut all = vec![Rc::clone(&root)];
    for i in 1..20_000u64 {
        let parent = Rc::clone(&all[(mix(i) % i) as usize]);
        let child = Rc::new(Node {
            value: i,
            parent: RefCell::new(Rc::downgrade(&parent)),
            children: RefCell::new(Vec::new()),
        });
        parent.children.borrow_mut().push(Rc::clone(&child));
        all.push(child);
    }
    for (i, n) in all.iter().enumerate().skip(1) {
        let p = n.parent.borrow().upgrade().expect("parent alive");
        assert_eq!(p.value, mix(i as u64) % i as u64);
        assert!(p.children.borrow().iter().any(|c| c.value == i as u64));
    }
    let weak_leaf = Rc::downgrade(&all[19_999]);
    drop(all);
    assert!(weak_leaf.upgrade().is_some(), "the tree holds the leaf");
    drop(root);
    assert!(
        weak_leaf.upgrade().is_none(),
        "dropping the root frees the tree"
    );

    // Arc shared by threads; clones made and dropped on every thread.
    let data: Arc<Vec<u64>> = Arc::new((0..100_000).map(mix).collect());
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let data = Arc::clone(&data);
            std::thread::spawn(move || {
                let mut local = Vec::new();
                for i in 0..2000 {
                    local.push(Arc::clone(&data));
                    if i % 3 == 0 {
                        local.pop();
                    }
                }
                let mut mine = Arc::clone(&data);
                Arc::make_mut(&mut mine)[t as usize] = t; // clones the 800 KB vector
                assert_eq!(mine[t as usize], t);
                assert_eq!(data[t as usize], mix(t));
                local.len()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 1333);
    }
    assert_eq!(Arc::strong_count(&data), 1);
    assert!(data.iter().enumerate().all(|(i, &x)| x == mix(i as u64)));
}

#[test]
fn vec_deque_and_friends() {
    let seed = common::seed("vec_deque_and_friends");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut d: VecDeque<u64> = VecDeque::new();
    let mut model: Vec<u64> = Vec::new(); // front is index 0
    for i in 0..100_000u64 {
        match rng.random_range(0..6u32) {
            0 | 1 => {
                d.push_back(i);
                model.push(i);
            }
            2 => {
                d.push_front(i);
                model.insert(0, i);
            }
            3 => assert_eq!(d.pop_front(), (!model.is_empty()).then(|| model.remove(0))),
            4 => assert_eq!(d.pop_back(), model.pop(), "seed {seed}"),
            _ => {
                if !d.is_empty() {
                    let k = rng.random_range(0..d.len());
                    d.rotate_left(k);
                    model.rotate_left(k);
                }
            }
        }
        if model.len() > 3000 {
            // Keep the Vec model cheap.
            d.truncate(1000);
            model.truncate(1000);
            d.shrink_to_fit();
        }
    }
    assert_eq!(d.make_contiguous(), &model[..], "seed {seed}");

    let mut heap: BinaryHeap<u64> = (0..50_000).map(mix).collect();
    let mut sorted: Vec<u64> = (0..50_000).map(mix).collect();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    for &want in &sorted {
        assert_eq!(heap.pop(), Some(want));
    }
    let mut list: LinkedList<Vec<u8>> = LinkedList::new();
    for i in 0..20_000usize {
        if i % 2 == 0 {
            list.push_back(vec![i as u8; i % 300]);
        } else {
            list.push_front(vec![i as u8; i % 300]);
        }
    }
    let mut count = 0;
    while let Some(v) = list.pop_front() {
        assert!(v.iter().all(|&b| b == v[0]));
        count += 1;
    }
    assert_eq!(count, 20_000);
}

#[test]
fn sorting_big_vectors() {
    let seed = common::seed("sorting_big_vectors");
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = 300_000 * common::scale();
    let v: Vec<u64> = (0..n).map(|_| rng.random()).collect();
    let mut a = v.clone();
    let mut b = v.clone();
    a.sort(); // allocates a scratch buffer
    b.sort_unstable();
    assert_eq!(a, b, "seed {seed}: stable and unstable sorts disagree");
    assert!(
        a.windows(2).all(|w| w[0] <= w[1]),
        "seed {seed}: not sorted"
    );
    assert_eq!(
        a.iter().fold(0u64, |x, &y| x.wrapping_add(y)),
        v.iter().fold(0u64, |x, &y| x.wrapping_add(y)),
        "seed {seed}: sorting changed the elements"
    );
    // Strings sort by content; the stable sort keeps equal keys in input order.
    let mut s: Vec<(String, usize)> = (0..60_000)
        .map(|i| (format!("{:04}", rng.random_range(0..1000u32)), i))
        .collect();
    s.sort_by(|x, y| x.0.cmp(&y.0));
    assert!(
        s.windows(2)
            .all(|w| w[0].0 < w[1].0 || (w[0].0 == w[1].0 && w[0].1 < w[1].1)),
        "seed {seed}: stable string sort"
    );
    let mut keyed: Vec<u32> = (0..100_000).map(|_| rng.random()).collect();
    keyed.sort_by_cached_key(|x| x.to_string()); // allocates a key per element
    assert!(
        keyed
            .windows(2)
            .all(|w| w[0].to_string() <= w[1].to_string()),
        "seed {seed}: sort_by_cached_key"
    );
}

/// `vec![0; n]` uses `alloc_zeroed`; the memory must read as zero even where it reuses a buffer
/// that was just filled and freed.
#[test]
fn zeroed_vectors_over_dirty_memory() {
    for n in [1, 100, 1024, 5000, 100_000, 1 << 20, 3 << 20, 40 << 20] {
        for _ in 0..3 {
            let dirty = std::hint::black_box(vec![0xEEu8; n]);
            assert_eq!(dirty[n - 1], 0xEE);
            drop(dirty);
            let clean = vec![0u8; n];
            assert!(common::all_zero(&clean), "vec![0u8; {n}] is not zero");
            drop(clean);
            let dirty = std::hint::black_box(vec![u64::MAX; n / 8 + 1]);
            assert_eq!(dirty[n / 8], u64::MAX);
            drop(dirty);
            let clean64 = vec![0u64; n / 8 + 1];
            // SAFETY: the vector's buffer holds `len` initialised `u64`s, and any bytes of a
            // `u64` are valid `u8`s; the slice borrows `clean64`.
            let bytes = unsafe {
                std::slice::from_raw_parts(clean64.as_ptr().cast::<u8>(), clean64.len() * 8)
            };
            assert!(
                common::all_zero(bytes),
                "vec![0u64; {}] is not zero",
                n / 8 + 1
            );
        }
    }
}

/// `try_reserve` of sizes no allocator can give reports an allocator error (the allocator returned
/// null) rather than aborting the process.
#[test]
fn try_reserve_impossible_sizes() {
    for n in [isize::MAX as usize, 1 << 62, 1 << 50, 1 << 47] {
        let mut v: Vec<u8> = Vec::new();
        let e = v
            .try_reserve_exact(n)
            .expect_err("reserving an impossible size");
        assert!(
            e.to_string().contains("allocator returned an error"),
            "try_reserve_exact({n}): {e}"
        );
        let mut w = vec![7u8; 1000];
        let e = w
            .try_reserve_exact(n - 1000)
            .expect_err("growing to an impossible size");
        assert!(e.to_string().contains("allocator returned an error"), "{e}");
        assert!(
            w.iter().all(|&b| b == 7),
            "a failed grow damaged the vector"
        );
        w.push(8);
        assert_eq!(w.len(), 1001);
    }
    let mut s = String::from("abc");
    assert!(s.try_reserve(1 << 50).is_err());
    assert_eq!(s, "abc");
}
