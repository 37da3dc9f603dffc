//! The one-line swap: every allocation of this program goes through shardalloc.

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

fn main() {
    let mut words: Vec<String> = (0..100_000).map(|i| format!("word-{i}")).collect();
    words.sort();
    let total: usize = words.iter().map(String::len).sum();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let v: Vec<Box<[u8]>> = (0..10_000)
                    .map(|i| vec![t as u8; i % 2000 + 1].into_boxed_slice())
                    .collect();
                v.iter().map(|b| b.len()).sum::<usize>()
            })
        })
        .collect();
    let from_threads: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    println!(
        "{} words, {total} bytes; threads allocated {from_threads} bytes",
        words.len()
    );
}
