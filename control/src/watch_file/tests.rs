use super::*;
use std::sync::Mutex;

/// Lines of `key=value`; a line without `=` is an error naming it.
#[derive(Debug, Default)]
struct Lines {
    applied: Mutex<Vec<Vec<(String, String)>>>,
}

impl Registry for Lines {
    type State = Vec<(String, String)>;

    fn parse(&self, text: &str) -> Result<Self::State, String> {
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| format!("lines[{i}]: no `=` in {l:?}"))
            })
            .collect()
    }

    fn apply(&self, state: Self::State) -> usize {
        let n = state.len();
        self.applied.lock().unwrap().push(state);
        n
    }
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "control-watch-file-{tag}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn a_bad_edit_keeps_the_last_good_state_and_is_counted() {
    let d = dir("bad-edit");
    let path = d.join("registry");
    std::fs::write(&path, "a=1\nb=2\n").unwrap();
    let registry = Arc::new(Lines::default());
    let metrics = Arc::new(SourceMetrics::default());
    let mut w = FileWatcher::start(path.clone(), registry.clone(), metrics.clone())
        .await
        .unwrap();
    assert!(metrics.is_ready());
    assert_eq!(registry.applied.lock().unwrap().len(), 1);
    assert_eq!(
        w.poll().await,
        Polled::Unchanged,
        "the same content is not applied again"
    );

    std::fs::write(&path, "a=1\nb\n").unwrap();
    assert_eq!(w.poll().await, Polled::Rejected);
    assert_eq!(
        w.poll().await,
        Polled::Unchanged,
        "a bad edit is reported once"
    );
    assert_eq!(metrics.reload_errors(), 1);
    assert_eq!(registry.applied.lock().unwrap().len(), 1, "nothing applied");

    std::fs::remove_file(&path).unwrap();
    assert_eq!(w.poll().await, Polled::Rejected);
    assert_eq!(w.poll().await, Polled::Unchanged);
    assert_eq!(metrics.reload_errors(), 2);

    std::fs::write(&path, "a=1\nb=3\nc=4\n").unwrap();
    assert_eq!(w.poll().await, Polled::Applied(3));
    let applied = registry.applied.lock().unwrap();
    assert_eq!(applied.last().unwrap()[1], ("b".into(), "3".into()));
    drop(applied);
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn a_bad_file_at_start_is_an_error_naming_the_section() {
    let d = dir("bad-start");
    let path = d.join("registry");
    std::fs::write(&path, "a=1\noops\n").unwrap();
    let e = FileWatcher::start(path, Arc::new(Lines::default()), Default::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("lines[1]"), "{e}");
    let missing = d.join("missing");
    let e = FileWatcher::start(missing, Arc::new(Lines::default()), Default::default())
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Read { .. }), "{e}");
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn the_parse_runs_off_the_runtime_thread() {
    #[derive(Debug)]
    struct Where(std::thread::ThreadId);
    impl Registry for Where {
        type State = bool;
        fn parse(&self, _: &str) -> Result<bool, String> {
            Ok(std::thread::current().id() != self.0)
        }
        fn apply(&self, off_runtime: bool) -> usize {
            assert!(off_runtime);
            1
        }
    }
    let d = dir("blocking");
    let path = d.join("registry");
    std::fs::write(&path, "x").unwrap();
    let state = load(&path, &Arc::new(Where(std::thread::current().id())))
        .await
        .unwrap();
    assert!(state);
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn run_stops_when_told() {
    let d = dir("run");
    let path = d.join("registry");
    std::fs::write(&path, "a=1\n").unwrap();
    let registry = Arc::new(Lines::default());
    let w = FileWatcher::new(path, registry.clone(), Default::default());
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(w.run(Duration::from_millis(10), rx));
    while registry.applied.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    let _ = std::fs::remove_dir_all(d);
}
