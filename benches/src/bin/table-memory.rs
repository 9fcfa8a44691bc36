//! Memory of a held routing table, measured with a counting global allocator: the bytes still
//! allocated once a table parsed from JSON is held by the proxy's `TableStore` (the JSON and
//! the wire form dropped), per service; and the peak while parsing and validating it.

use clap::Parser;
use config_model::{Table, TableSpec};
use maille_benches::alloc_count::{self, CountingAlloc};
use maille_benches::fixtures;
use maille_proxy::TableStore;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Prints the bytes a held table takes, for tables of the given sizes.
#[derive(Parser, Debug)]
struct Args {
    /// Table sizes (services) to measure.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    services: Vec<usize>,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
}

struct Figures {
    services: usize,
    json: usize,
    spec: usize,
    table: usize,
    peak: usize,
    allocations: u64,
}

fn measure(services: usize, endpoints: usize) -> Figures {
    let json = fixtures::table_json(services, endpoints);

    let before = alloc_count::live_bytes();
    let spec: TableSpec = serde_json::from_slice(&json).expect("fixture parses");
    let spec_bytes = alloc_count::live_bytes() - before;
    drop(spec);

    let store = TableStore::new();
    let before = alloc_count::live_bytes();
    let allocs_before = alloc_count::allocations();
    alloc_count::reset_peak();
    store.store(Table::from_json(&json).expect("fixture validates"));
    let peak = alloc_count::peak_bytes() - before;
    let allocations = alloc_count::allocations() - allocs_before;
    let held = alloc_count::live_bytes() - before;
    assert_eq!(store.load().len(), services);
    Figures {
        services,
        json: json.len(),
        spec: spec_bytes,
        table: held,
        peak,
        allocations,
    }
}

fn main() {
    let args = Args::parse();
    println!(
        "| services | endpoints | JSON bytes | wire form (TableSpec) | held Table | bytes/service | \
         peak while loading | allocations to load |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &args.services {
        let f = measure(n, args.endpoints);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            f.services,
            f.services * args.endpoints,
            f.json,
            f.spec,
            f.table,
            f.table / f.services.max(1),
            f.peak,
            f.allocations,
        );
    }
    println!(
        "\nBytes are what the program allocated (counting global allocator), without the \
         allocator's per-block overhead. \"held Table\" is what stays allocated while the proxy \
         holds the table; \"peak\" includes the wire form alive during validation."
    );
}
