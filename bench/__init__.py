"""routedeck's benchmarks: `bench.run` (the command), `bench.loadgen`, `bench.services`."""
