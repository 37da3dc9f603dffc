//! Per-subsystem heaps: each request allocates into a heap of its own and
//! drops everything at once (the README's "Per-subsystem heaps" example).
//!
//! Run: `cargo run --release --example request_heap`

use allocator_api2::{boxed::Box, vec::Vec};
use hashbrown::HashMap;
use shardalloc::Heap;

#[global_allocator]
static GLOBAL: shardalloc::ShardAlloc = shardalloc::ShardAlloc;

fn handle_request(body: &str) -> usize {
    let heap = Heap::new();
    heap.set_limit(Some(64 << 20)); // this request may hold at most 64 MiB
    {
        let mut words: Vec<&str, &Heap> = Vec::new_in(&heap);
        let mut counts: HashMap<&str, usize, _, &Heap> = HashMap::new_in(&heap);
        for word in body.split_whitespace() {
            words.push(word);
            *counts.entry(word).or_insert(0) += 1;
        }
        let summary = Box::new_in((words.len(), counts.len()), &heap);
        println!(
            "{} words, {} distinct; heap: {:?}",
            summary.0,
            summary.1,
            heap.stats()
        );
    } // the collections borrow `heap`, so they must end before…
    let pages = heap.stats().pages;
    heap.destroy(); // …everything goes at once, in time proportional to the pages
    pages
}

fn main() {
    let body = "the quick brown fox jumps over the lazy dog ".repeat(10_000);
    for request in 0..3 {
        let pages = handle_request(&body);
        println!("request {request}: {pages} pages released by destroy");
    }
    shardalloc::print_stats();
}
