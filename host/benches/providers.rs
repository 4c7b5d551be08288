//! What a provider costs the host, for every built-in provider: loading it cold (a
//! compile into an empty cache) against warm (the next process, from the cache);
//! instantiating it for an environment; a host→guest `check-health` call through the
//! instance's actor; and the resident memory each idle instance adds, measured with
//! 1,000 of them alive at once (RSS from `/proc/self/statm`). A second table puts
//! Tether's instantiate (wall time, and CPU time of all the process's threads, which
//! other processes' load disturbs less) and `check-health` beside bare wasmtime's,
//! from the same run and the same component (see `bare`), with the ratios
//! Tether ÷ bare; the two sides' calls are timed in alternating blocks.
//!
//! A third table loads each as a drop-in is loaded, compiled first by a compiler child
//! (the `tether` binary, `engine::compile`), beside the host compiling it itself: cold,
//! warm, and with no cache (where the component is compiled twice).
//!
//! Prints three tables; run with `cargo bench -p tether --bench providers` (add
//! `--profile dev` for a quick look). Instances are instantiated but not started, so
//! no resource or runtime exists behind them: this is the engine's share alone. Each
//! provider is measured in a process of its own (the benchmark runs itself with
//! `--one NAME`), so memory freed by one provider's instances cannot hide the next
//! one's growth.

mod bare;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tether::config::{CompileCacheConfig, Grant, LimitsConfig};
use tether::engine::{
    Call, Engine, HealthReport, HealthState, InstanceSetup, LoadedProvider, NoRuntime,
    ProviderHandle, ProviderSource, Reply, StateWriter, builtin_components,
};

/// Cold and warm loads measured per provider (each cold one in a fresh cache).
const LOADS: usize = 5;
/// Instances alive at once for the instantiation time and the memory figure.
const INSTANCES: usize = 1_000;
/// `check-health` calls timed per provider, on each side.
const CALLS: usize = 10_000;
/// Calls in a row on one side before the other side's turn.
const BLOCK: usize = 100;

type BoxError = Box<dyn std::error::Error>;

fn main() -> Result<(), BoxError> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run())
}

struct Row {
    name: String,
    kib: usize,
    cold: Duration,
    warm: Duration,
    instantiate: Duration,
    instantiate_cpu: Duration,
    health_p50: Duration,
    bare: BareFigures,
    rss_per_instance: f64,
    apart: ApartFigures,
}

/// Loads compiled apart first (see `engine::compile`), medians as the others.
struct ApartFigures {
    cold: Duration,
    warm: Duration,
    /// With no cache, in the host alone and then apart.
    uncached: Duration,
    uncached_apart: Duration,
}

/// Bare wasmtime's figures, measured as Tether's are.
struct BareFigures {
    instantiate: Duration,
    instantiate_cpu: Duration,
    health_p50: Duration,
}

async fn run() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--one") {
        let name = args.get(i + 1).ok_or("--one takes a provider name")?;
        let (_, bytes) = (builtin_components().iter())
            .find(|(n, _)| n == name)
            .ok_or_else(|| format!("no built-in provider {name:?}"))?;
        let r = measure(name, bytes).await?;
        println!("{}\n{}\n{}", row(&r), beside_bare(&r), beside_apart(&r));
        return Ok(());
    }
    let mut rows = Vec::new();
    let mut beside = Vec::new();
    let mut apart = Vec::new();
    for (name, _) in builtin_components() {
        eprintln!("measuring {name} ...");
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["--one", name])
            .stderr(std::process::Stdio::inherit())
            .output()?;
        if !out.status.success() {
            return Err(format!("measuring {name} failed: {}", out.status).into());
        }
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = out.lines();
        rows.extend(lines.next().map(str::to_owned));
        beside.extend(lines.next().map(str::to_owned));
        apart.extend(lines.next().map(str::to_owned));
    }
    println!(
        "| provider | component | cold load (compile) | warm load (cache) | cold/warm | instantiate | check-health p50 | RSS per idle instance |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    rows.iter().for_each(|r| println!("{r}"));
    println!();
    println!(
        "| provider | instantiate: Tether | bare | ratio | instantiate CPU: Tether | bare | ratio | check-health p50: Tether | bare | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    beside.iter().for_each(|r| println!("{r}"));
    println!();
    println!(
        "| provider | cold load: in the host | apart | ratio | warm load: in the host | apart | ratio | no cache: in the host | apart | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    apart.iter().for_each(|r| println!("{r}"));
    Ok(())
}

fn beside_apart(r: &Row) -> String {
    let ratio = |a: Duration, h: Duration| a.as_secs_f64() / h.as_secs_f64();
    let a = &r.apart;
    format!(
        "| {} | {:.1} ms | {:.1} ms | {:.2}× | {:.2} ms | {:.2} ms | {:.2}× | {:.1} ms | {:.1} ms | {:.2}× |",
        r.name,
        ms(r.cold),
        ms(a.cold),
        ratio(a.cold, r.cold),
        ms(r.warm),
        ms(a.warm),
        ratio(a.warm, r.warm),
        ms(a.uncached),
        ms(a.uncached_apart),
        ratio(a.uncached_apart, a.uncached),
    )
}

fn row(r: &Row) -> String {
    format!(
        "| {} | {} KiB | {:.1} ms | {:.2} ms | {:.0}× | {:.0} µs | {:.2} µs | {:.1} KiB |",
        r.name,
        r.kib,
        ms(r.cold),
        ms(r.warm),
        r.cold.as_secs_f64() / r.warm.as_secs_f64(),
        us(r.instantiate),
        us(r.health_p50),
        r.rss_per_instance,
    )
}

fn beside_bare(r: &Row) -> String {
    let ratio = |t: Duration, b: Duration| t.as_secs_f64() / b.as_secs_f64();
    format!(
        "| {} | {:.0} µs | {:.0} µs | {:.2}× | {:.0} µs | {:.0} µs | {:.2}× | {:.2} µs | {:.2} µs | {:.2}× |",
        r.name,
        us(r.instantiate),
        us(r.bare.instantiate),
        ratio(r.instantiate, r.bare.instantiate),
        us(r.instantiate_cpu),
        us(r.bare.instantiate_cpu),
        ratio(r.instantiate_cpu, r.bare.instantiate_cpu),
        us(r.health_p50),
        us(r.bare.health_p50),
        ratio(r.health_p50, r.bare.health_p50),
    )
}

async fn measure(name: &str, bytes: &[u8]) -> Result<Row, BoxError> {
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let (mut cold_apart, mut warm_apart) = (Vec::new(), Vec::new());
    let (mut uncached, mut uncached_apart) = (Vec::new(), Vec::new());
    let none = CompileCacheConfig::disabled();
    for _ in 0..LOADS {
        for (apart, cold, warm) in [
            (false, &mut cold, &mut warm),
            (true, &mut cold_apart, &mut warm_apart),
        ] {
            let cache = tempfile::tempdir()?;
            let config = CompileCacheConfig::in_dir(cache.path().join("cache"));
            // A fresh engine per load, as a fresh process would have.
            let (elapsed, hits) = timed_load(&config, bytes, apart).await?;
            check(hits == Some((0, 1)), "the cold load compiled", hits)?;
            cold.push(elapsed);
            let (elapsed, hits) = timed_load(&config, bytes, apart).await?;
            check(
                hits == Some((1, 0)),
                "the warm load came from the cache",
                hits,
            )?;
            warm.push(elapsed);
        }
        uncached.push(timed_load(&none, bytes, false).await?.0);
        uncached_apart.push(timed_load(&none, bytes, true).await?.0);
    }
    let apart = ApartFigures {
        cold: median(&mut cold_apart),
        warm: median(&mut warm_apart),
        uncached: median(&mut uncached),
        uncached_apart: median(&mut uncached_apart),
    };

    let engine = Engine::new(LimitsConfig::default(), Default::default())?;
    let provider = engine.load(bytes.to_vec(), ProviderSource::BuiltIn).await?;
    let dir = tempfile::tempdir()?;
    let before = rss_kib()?;
    let cpu = cpu_time()?;
    let start = Instant::now();
    let mut handles = Vec::with_capacity(INSTANCES);
    for i in 0..INSTANCES {
        handles.push(instance(&engine, &provider, dir.path(), i).await?);
    }
    let instantiate = start.elapsed() / INSTANCES as u32;
    let instantiate_cpu = cpu_time()?.saturating_sub(cpu) / INSTANCES as u32;
    // Idle instances, as the column says: an instance that has made no call for a
    // second gives its fiber stack's pages back (within the sweeper's half second).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let after = rss_kib()?;
    let rss_per_instance = after.saturating_sub(before) as f64 / INSTANCES as f64;

    // Every instance but the one called ends before bare wasmtime's are made, as the
    // calls are timed on both sides together (see `paired_health`).
    let mut handles = handles.into_iter();
    let handle = handles.next().ok_or("no instance was made")?;
    for h in handles {
        h.shutdown().await;
    }
    let (bare_instantiate, bare_instantiate_cpu, mut bare_instance) = measure_bare(bytes).await?;
    let ((health_p50, answer), (bare_health_p50, bare_answer)) =
        paired_health(&handle, &mut bare_instance).await?;
    handle.shutdown().await;
    // Both sides made the same call: an unstarted instance answers alike in both.
    if !same_health(&answer, &bare_answer) {
        return Err(format!("Tether answered {answer:?}, bare wasmtime {bare_answer:?}").into());
    }
    let bare = BareFigures {
        instantiate: bare_instantiate,
        instantiate_cpu: bare_instantiate_cpu,
        health_p50: bare_health_p50,
    };
    Ok(Row {
        name: name.to_owned(),
        kib: bytes.len() / 1024,
        cold: median(&mut cold),
        warm: median(&mut warm),
        instantiate,
        instantiate_cpu,
        health_p50,
        bare,
        rss_per_instance,
        apart,
    })
}

/// Bare wasmtime's instantiate (mean wall and CPU time over [`INSTANCES`] alive at
/// once), measured as Tether's is, and the first of those instances, for the calls.
async fn measure_bare(bytes: &[u8]) -> Result<(Duration, Duration, bare::BareInstance), BoxError> {
    let bare = bare::Bare::new(bytes, tether::engine::MAX_WASM_STACK)?;
    // One instance first, so both sides start with the component's code warm.
    drop(bare.instantiate().await?);
    let cpu = cpu_time()?;
    let start = Instant::now();
    let mut instances = Vec::with_capacity(INSTANCES);
    for _ in 0..INSTANCES {
        instances.push(bare.instantiate().await?);
    }
    let instantiate = start.elapsed() / INSTANCES as u32;
    let instantiate_cpu = cpu_time()?.saturating_sub(cpu) / INSTANCES as u32;
    let first = instances.swap_remove(0);
    Ok((instantiate, instantiate_cpu, first))
}

/// `check-health` through Tether's `handle` and bare wasmtime's `bare` (typed, in this
/// task), [`CALLS`] each, taken in alternating blocks of [`BLOCK`] so both sides see
/// the machine alike (its load and its cores' speed move within a run, and the two
/// sides measured one after the other differed by up to 2× on that alone); each side's
/// median and last answer.
async fn paired_health(
    handle: &ProviderHandle,
    bare: &mut bare::BareInstance,
) -> Result<((Duration, HealthReport), (Duration, bare::Health)), BoxError> {
    let mut tether = Vec::with_capacity(CALLS);
    let mut plain = Vec::with_capacity(CALLS);
    let (mut answer, mut bare_answer) = (None, None);
    for _ in 0..CALLS / BLOCK {
        for _ in 0..BLOCK {
            let t = Instant::now();
            match handle.call(Call::Health, Duration::from_secs(5)).await {
                Ok(Reply::Health(h)) => {
                    tether.push(t.elapsed());
                    answer = Some(h);
                }
                other => return Err(format!("check-health answered {other:?}").into()),
            }
        }
        for _ in 0..BLOCK {
            let t = Instant::now();
            let health = bare.check_health().await?;
            plain.push(t.elapsed());
            bare_answer = Some(health);
        }
    }
    let answer = answer.ok_or("no check-health call was made")?;
    let bare_answer = bare_answer.ok_or("no bare check-health call was made")?;
    Ok((
        (median(&mut tether), answer),
        (median(&mut plain), bare_answer),
    ))
}

fn same_health(tether: &HealthReport, bare: &bare::Health) -> bool {
    let state = match bare.state {
        bare::HealthState::Healthy => HealthState::Healthy,
        bare::HealthState::Degraded => HealthState::Degraded,
        bare::HealthState::Unhealthy => HealthState::Unhealthy,
    };
    tether.state == state && tether.detail == bare.detail
}

/// Loads `bytes` in a new engine using the cache `config`, compiled `apart` first or
/// not; the time of the load alone and the cache's (hits, misses) after it.
async fn timed_load(
    config: &CompileCacheConfig,
    bytes: &[u8],
    apart: bool,
) -> Result<(Duration, Option<(usize, usize)>), BoxError> {
    let engine = Engine::with_compile_cache(LimitsConfig::default(), Default::default(), config)?;
    if apart {
        engine.set_compiler(env!("CARGO_BIN_EXE_tether").into());
    }
    let bytes = bytes.to_vec();
    let start = Instant::now();
    engine.load(bytes, ProviderSource::BuiltIn).await?;
    let elapsed = start.elapsed();
    let stats = engine.compile_cache_stats();
    Ok((elapsed, stats.map(|s| (s.hits, s.misses))))
}

async fn instance(
    engine: &Engine,
    provider: &LoadedProvider,
    dir: &std::path::Path,
    i: usize,
) -> Result<ProviderHandle, BoxError> {
    let id = format!("bench-{i}");
    let setup = InstanceSetup {
        env_id: id,
        workspace: dir.to_owned(),
        state_dir: dir.join(".state"),
        made: None,
        request: provider.description.request(),
        grant: Grant::default(),
        runtime: Arc::new(NoRuntime),
        state: StateWriter::detached(),
        refusals: Default::default(),
    };
    Ok(engine.instantiate(provider, setup).await?)
}

/// CPU time all live threads of this process have run, from the nanosecond counters
/// of `/proc/self/task/*/schedstat` (`/proc/self/stat` counts in 10 ms ticks).
fn cpu_time() -> Result<Duration, BoxError> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task")? {
        let path = task?.path().join("schedstat");
        // A thread that ended since the listing has no file any more.
        let Ok(stat) = std::fs::read_to_string(path) else {
            continue;
        };
        let on_cpu = stat.split_whitespace().next().ok_or("empty schedstat")?;
        ns += on_cpu.parse::<u64>()?;
    }
    Ok(Duration::from_nanos(ns))
}

/// Resident set size of this process, from `/proc/self/statm` (pages).
fn rss_kib() -> Result<usize, BoxError> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .ok_or("short /proc/self/statm")?
        .parse()?;
    let page =
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)?.ok_or("no page size")? as usize;
    Ok(pages * page / 1024)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn check(ok: bool, what: &str, hits: Option<(usize, usize)>) -> Result<(), BoxError> {
    if ok {
        Ok(())
    } else {
        Err(format!("expected {what}; cache (hits, misses) = {hits:?}").into())
    }
}
