//! Waiting for the package manager's locks. apt-daily and
//! unattended-upgrades hold the dpkg and apt locks (fcntl record locks) for
//! minutes at a time; bootpatch waits for them up to the configured timeout
//! and names the holder when it gives up. It also serialises bootpatch
//! against itself with a lock of its own.

use crate::error::{Error, Result};
use rustix::fs::{fcntl_lock, flock, FlockOperation};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The locks apt and dpkg take, in the order they take them.
pub const APT_LOCKS: [&str; 4] = [
    "/var/lib/dpkg/lock-frontend",
    "/var/lib/dpkg/lock",
    "/var/lib/apt/lists/lock",
    "/var/cache/apt/archives/lock",
];

/// Whether another process holds the record lock on `path`. A file that
/// does not exist is not locked. Probing takes the lock for an instant and
/// drops it at once (closing the file releases it).
pub fn is_locked(path: &Path) -> std::io::Result<bool> {
    let f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match fcntl_lock(&f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(false),
        Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::ACCESS => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Who holds a lock on `path`, from /proc/locks: `pid 1234 (unattended-upgr)`.
pub fn holder(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = holder_pid(&locks, meta.dev(), meta.ino())?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    Some(format!("pid {pid} ({})", comm.trim()))
}

/// Finds the pid holding a lock on the inode in /proc/locks text. Lines look
/// like `1: POSIX  ADVISORY  WRITE 1234 fe:01:393228 0 EOF`; the device is
/// `major:minor` in hex.
pub fn holder_pid(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // A blocked waiter's line has "->" after the number; skip those.
        if f.len() < 6 || f[1] == "->" {
            return None;
        }
        let mut id = f[5].split(':');
        let (ma, mi, i) = (id.next()?, id.next()?, id.next()?);
        let same = u64::from_str_radix(ma, 16).ok()? == major
            && u64::from_str_radix(mi, 16).ok()? == minor
            && i.parse::<u64>().ok()? == ino;
        if same {
            f[4].parse().ok()
        } else {
            None
        }
    })
}

/// Waits until none of `paths` is locked, polling, until `deadline`. Returns
/// the time waited.
pub fn wait_free(
    paths: &[&str],
    started: Instant,
    timeout: Duration,
    mut on_wait: impl FnMut(&str, Option<String>),
) -> Result<Duration> {
    let mut announced = false;
    loop {
        let mut busy = None;
        for p in paths {
            if is_locked(Path::new(p)).map_err(|e| Error::io(format!("probing lock {p}"), e))? {
                busy = Some(*p);
                break;
            }
        }
        let Some(p) = busy else {
            return Ok(started.elapsed());
        };
        let who = holder(Path::new(p));
        if started.elapsed() >= timeout {
            return Err(Error::LockTimeout {
                lock: p.to_string(),
                holder: who,
                waited_secs: started.elapsed().as_secs(),
            });
        }
        if !announced {
            on_wait(p, who);
            announced = true;
        }
        std::thread::sleep(
            Duration::from_millis(500)
                .min(timeout.saturating_sub(started.elapsed()))
                .max(Duration::from_millis(50)),
        );
    }
}

/// bootpatch's own lock: one patch run at a time on a node. Held until the
/// returned file is dropped.
pub fn take_own_lock(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    match flock(&f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(f),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(Error::LockTimeout {
            lock: path.display().to_string(),
            holder: Some("another bootpatch run".into()),
            waited_secs: 0,
        }),
        Err(e) => Err(Error::io(format!("locking {}", path.display()), e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 4242 fe:01:393228 0 EOF\n1: -> POSIX  ADVISORY  WRITE 77 fe:01:393228 0 EOF\n2: FLOCK  ADVISORY  WRITE 99 00:19:12 0 EOF\n";
        let dev = (0xfe << 8) | 0x01;
        assert_eq!(holder_pid(locks, dev, 393228), Some(4242));
        assert_eq!(holder_pid(locks, dev, 1), None);
        assert_eq!(holder_pid(locks, 0x19, 12), Some(99));
    }

    #[test]
    fn sees_a_lock_held_by_another_process() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        std::fs::write(&p, "").unwrap();
        assert!(!is_locked(&p).unwrap());
        // flock(1) holds a BSD lock, not a record lock; use a child that
        // takes an fcntl lock the way dpkg does.
        let mut child = std::process::Command::new("python3")
            .args(["-c", "import fcntl,sys,time; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)"])
            .arg(&p)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert!(is_locked(&p).unwrap());
        let who = holder(&p).unwrap();
        assert!(who.contains(&child.id().to_string()), "{who}");
        let p_str = p.to_str().unwrap().to_string();
        let err = wait_free(
            &[&p_str],
            Instant::now(),
            Duration::from_millis(300),
            |_, _| {},
        )
        .unwrap_err();
        assert!(matches!(err, Error::LockTimeout { .. }), "{err}");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(wait_free(&[&p_str], Instant::now(), Duration::from_secs(5), |_, _| {}).is_ok());
    }
}
