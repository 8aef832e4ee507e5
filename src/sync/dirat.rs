//! A directory held open, for the many operations on paths inside it.
//!
//! Each file operation on an absolute path walks every component from `/` again: for a
//! message in a domain under the mail root, ~11 components, twice for a rename. The hot
//! operations of both ends (listing, stat, open, rename, link, unlink, the uidlist dotlock)
//! go through a [`DirAt`] of the domain directory instead: `*at` system calls relative to
//! its descriptor walk only the 3-4 components inside the domain (BENCHMARKS.md, round 15).
//! POSIX calls only (Linux and FreeBSD); `renameat2` stays in [`super::fsops::exchange`].

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A directory opened `O_DIRECTORY | O_NOFOLLOW`, and its path (for messages).
pub struct DirAt {
    fd: OwnedFd,
    path: PathBuf,
}

/// `rel` as a C string ("" is the directory itself).
fn c_rel(rel: &str) -> io::Result<CString> {
    CString::new(if rel.is_empty() { "." } else { rel })
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

/// The result of a system call returning 0 or -1.
fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Dir,
    File,
    Symlink,
    Other,
}

fn type_of(st: &libc::stat) -> Type {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Type::Dir,
        libc::S_IFREG => Type::File,
        libc::S_IFLNK => Type::Symlink,
        _ => Type::Other,
    }
}

/// The type of `name` in the directory `dir` (`lstat`); `None` when that fails.
fn stat_type(dir: libc::c_int, name: &[u8]) -> Option<Type> {
    let c = CString::new(name).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid descriptor, a NUL-terminated name and a buffer of the right type.
    let r = unsafe { libc::fstatat(dir, c.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    // SAFETY: fstatat succeeded, so it filled the buffer.
    (r == 0).then(|| type_of(unsafe { &st.assume_init() }))
}

/// Clear `errno` (to tell the end of a listing from an error).
fn set_errno_zero() {
    // SAFETY: the calling thread's errno, always valid.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    unsafe {
        *libc::__errno_location() = 0;
    }
    // SAFETY: as above.
    #[cfg(any(target_os = "freebsd", target_os = "macos", target_os = "dragonfly"))]
    unsafe {
        *libc::__error() = 0;
    }
}

impl DirAt {
    /// Open `path` (a symlink as its last component is refused).
    pub fn open(path: &Path) -> io::Result<DirAt> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(path)?;
        Ok(DirAt {
            fd: f.into(),
            path: path.to_path_buf(),
        })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The absolute path of `rel` (for messages and for code that needs a path).
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    fn openat(&self, rel: &str, flags: libc::c_int, mode: libc::c_uint) -> io::Result<OwnedFd> {
        let c = c_rel(rel)?;
        // SAFETY: a valid descriptor and a NUL-terminated path.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                mode,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Open the regular file (or other non-symlink) `rel` for reading.
    pub fn open_read(&self, rel: &str) -> io::Result<File> {
        self.openat(rel, libc::O_RDONLY, 0).map(File::from)
    }

    /// Create `rel` for writing, mode 0600; never follows or replaces anything.
    pub fn create_new(&self, rel: &str) -> io::Result<File> {
        self.openat(rel, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600)
            .map(File::from)
    }

    /// Open the existing file `rel` for writing (not blocking on a FIFO).
    pub fn open_write(&self, rel: &str) -> io::Result<File> {
        self.openat(rel, libc::O_WRONLY | libc::O_NONBLOCK, 0)
            .map(File::from)
    }

    /// Open the directory `rel` for listing.
    pub fn open_dir(&self, rel: &str) -> io::Result<OwnedFd> {
        self.openat(rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)
    }

    /// A reference to `rel` that does no I/O (`O_PATH`, Linux), for
    /// [`super::fsops::release_later`]; nothing elsewhere.
    pub fn hold(&self, rel: &str) -> Option<File> {
        #[cfg(target_os = "linux")]
        {
            self.openat(rel, libc::O_PATH, 0).ok().map(File::from)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = rel;
            None
        }
    }

    /// `lstat` of `rel` ("" is the directory itself).
    pub fn lstat(&self, rel: &str) -> io::Result<libc::stat> {
        let c = c_rel(rel)?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: a valid descriptor, a NUL-terminated path and a buffer of the right type.
        check(unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        // SAFETY: fstatat succeeded, so it filled the buffer.
        Ok(unsafe { st.assume_init() })
    }

    /// Whether `rel` is a directory (not following a symlink).
    pub fn is_dir(&self, rel: &str) -> io::Result<bool> {
        self.lstat(rel).map(|st| type_of(&st) == Type::Dir)
    }

    /// The target of the symlink `rel` (at most 4095 bytes).
    pub fn readlink(&self, rel: &str) -> io::Result<Vec<u8>> {
        let c = c_rel(rel)?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: a valid descriptor, a NUL-terminated path, a buffer of buf.len() bytes.
        let n = unsafe {
            libc::readlinkat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast::<libc::c_char>(),
                buf.len(),
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        if n >= buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "symlink target too long",
            ));
        }
        buf.truncate(n);
        Ok(buf)
    }

    /// Each entry of the directory `rel` (not `.` and `..`): its name and type, the type
    /// from the listing itself when the file system gives it (no stat), else from `lstat`
    /// (`None` when that fails: the entry vanished). Names are bytes, any length the
    /// system allows; an error ends the listing.
    pub fn list(&self, rel: &str, mut each: impl FnMut(&[u8], Option<Type>)) -> io::Result<()> {
        let fd = self.open_dir(rel)?;
        let raw = fd.as_raw_fd();
        // SAFETY: fdopendir takes over a valid directory descriptor (closed by closedir).
        let dir = unsafe { libc::fdopendir(raw) };
        if dir.is_null() {
            return Err(io::Error::last_os_error());
        }
        std::mem::forget(fd);
        struct Closing(*mut libc::DIR);
        impl Drop for Closing {
            fn drop(&mut self) {
                // SAFETY: a stream from fdopendir, closed once.
                unsafe { libc::closedir(self.0) };
            }
        }
        let dir = Closing(dir);
        loop {
            set_errno_zero();
            // SAFETY: a valid stream; the entry it returns lives until the next call.
            let ent = unsafe { libc::readdir(dir.0) };
            if ent.is_null() {
                return match io::Error::last_os_error() {
                    e if e.raw_os_error().unwrap_or(0) != 0 => Err(e),
                    _ => Ok(()),
                };
            }
            // SAFETY: readdir returned an entry whose d_name is NUL-terminated.
            let (name, d_type) = unsafe {
                (
                    std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()).to_bytes(),
                    (*ent).d_type,
                )
            };
            if name == b"." || name == b".." {
                continue;
            }
            let ty = match d_type {
                libc::DT_DIR => Some(Type::Dir),
                libc::DT_REG => Some(Type::File),
                libc::DT_LNK => Some(Type::Symlink),
                libc::DT_UNKNOWN => stat_type(raw, name),
                _ => Some(Type::Other),
            };
            each(name, ty);
        }
    }

    /// `rename(from, to)`, both inside this directory.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (f, t) = (c_rel(from)?, c_rel(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: a valid descriptor and two NUL-terminated paths.
        check(unsafe { libc::renameat(fd, f.as_ptr(), fd, t.as_ptr()) })
    }

    /// `renameat2(from, to, flags)` (Linux).
    #[cfg(target_os = "linux")]
    pub fn rename2(&self, from: &str, to: &str, flags: libc::c_uint) -> io::Result<()> {
        let (f, t) = (c_rel(from)?, c_rel(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: a valid descriptor and two NUL-terminated paths.
        check(unsafe { libc::renameat2(fd, f.as_ptr(), fd, t.as_ptr(), flags) })
    }

    /// A hard link `to` of `from` (a symlink `from` is linked itself, not followed).
    pub fn hard_link(&self, from: &str, to: &str) -> io::Result<()> {
        let (f, t) = (c_rel(from)?, c_rel(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: a valid descriptor and two NUL-terminated paths.
        check(unsafe { libc::linkat(fd, f.as_ptr(), fd, t.as_ptr(), 0) })
    }

    /// Remove the non-directory `rel`.
    pub fn unlink(&self, rel: &str) -> io::Result<()> {
        let c = c_rel(rel)?;
        // SAFETY: a valid descriptor and a NUL-terminated path.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) })
    }

    /// [`DirAt::rename`], the file it replaces (if any) freed by the closing thread.
    pub fn rename_freeing_later(&self, from: &str, to: &str) -> io::Result<()> {
        let replaced = self.hold(to);
        self.rename(from, to)?;
        super::fsops::release_later(replaced);
        Ok(())
    }

    /// [`DirAt::unlink`], the file freed by the closing thread.
    pub fn remove_file_freeing_later(&self, rel: &str) -> io::Result<()> {
        let held = self.hold(rel);
        self.unlink(rel)?;
        super::fsops::release_later(held);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_stay_relative_to_the_directory_and_refuse_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("dom");
        std::fs::create_dir_all(base.join("u/cur")).unwrap();
        std::fs::create_dir_all(tmp.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), base.join("u/link")).unwrap();
        let d = DirAt::open(&base).unwrap();
        assert_eq!(d.path(), base.as_path());
        {
            use std::io::Write;
            let mut f = d.create_new("u/cur/a").unwrap();
            f.write_all(b"hello").unwrap();
        }
        assert!(d.create_new("u/cur/a").is_err(), "never replaces");
        d.rename("u/cur/a", "u/cur/b").unwrap();
        d.hard_link("u/cur/b", "u/cur/c").unwrap();
        assert_eq!(d.lstat("u/cur/c").unwrap().st_nlink, 2);
        assert!(d.is_dir("u/cur").unwrap());
        assert!(!d.is_dir("u/link").unwrap(), "a symlink is not followed");
        assert!(d.open_dir("u/link").is_err());
        assert_eq!(
            d.readlink("u/link").unwrap(),
            tmp.path().join("elsewhere").as_os_str().as_encoded_bytes()
        );
        d.remove_file_freeing_later("u/cur/b").unwrap();
        d.rename_freeing_later("u/cur/c", "u/cur/d").unwrap();
        let mut s = String::new();
        use std::io::Read;
        d.open_read("u/cur/d")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "hello");
        assert!(d.open_read("u/link").is_err(), "O_NOFOLLOW");
        assert_eq!(
            d.unlink("u/cur/b").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(d.lstat("a\0b").is_err());
        let mut seen = Vec::new();
        d.list("u", |name, ty| {
            seen.push((String::from_utf8_lossy(name).into_owned(), ty))
        })
        .unwrap();
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            seen,
            [
                ("cur".to_string(), Some(Type::Dir)),
                ("link".to_string(), Some(Type::Symlink))
            ]
        );
        assert!(
            d.list("u/link", |_, _| ()).is_err(),
            "a symlink is not listed"
        );
        // The descriptor stays on the directory opened, whatever its path becomes.
        std::fs::rename(&base, tmp.path().join("moved")).unwrap();
        assert!(d.lstat("u/cur/d").is_ok());
        assert!(DirAt::open(&tmp.path().join("moved/u/link")).is_err());
    }
}
