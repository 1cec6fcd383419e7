/* sqlite_copy.c - a consistent copy of a live SQLite database into a file
 * descriptor, for the plugin's backup operation.
 *
 * The copy is SQLite's online backup API reading through a connection of
 * its own, inside one read transaction: in WAL mode that is a snapshot
 * (writers go on committing, and the copy holds none of their later
 * changes), so it can be taken a piece at a time, checking for a stop
 * between pieces, without starting over when the store changes.
 *
 * The destination is a descriptor, not a path: the caller made it (an
 * unnamed file, say) and SQLite's own file layer opens only names.  A
 * minimal VFS, "peerstore-fd", gives SQLite that descriptor as the main
 * database file of a connection that never keeps a journal (the file is
 * the caller's to discard if the copy fails, so there is nothing to roll
 * back to).  It implements no locking - nobody else knows the file - and
 * no sync: the caller syncs what it keeps, where it keeps it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "sqlite_copy.h"
#include "sqlite_queries.h"

#define VFS_NAME "peerstore-fd"
/* Pages copied between looks at the stop flag: about 1 MiB at the
 * default page size. */
#define PAGES_PER_STEP 256

typedef struct fd_file {
  sqlite3_file base;
  int fd;
} fd_file;

static int fd_close(sqlite3_file *f) {
  (void)f; /* the descriptor is the caller's */
  return SQLITE_OK;
}

static int fd_read(sqlite3_file *f, void *buf, int n, sqlite3_int64 off) {
  int fd = ((fd_file *)f)->fd;
  size_t got = 0;

  while (got < (size_t)n) {
    ssize_t r = pread(fd, (char *)buf + got, (size_t)n - got,
                      (off_t)off + (off_t)got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return SQLITE_IOERR_READ;
    if (r == 0) {
      /* SQLite asks past the end of a file it is growing; the rest
       * reads as zeros, as its own layer does. */
      memset((char *)buf + got, 0, (size_t)n - got);
      return SQLITE_IOERR_SHORT_READ;
    }
    got += (size_t)r;
  }
  return SQLITE_OK;
}

static int fd_write(sqlite3_file *f, const void *buf, int n,
                    sqlite3_int64 off) {
  int fd = ((fd_file *)f)->fd;
  size_t put = 0;

  while (put < (size_t)n) {
    ssize_t r = pwrite(fd, (const char *)buf + put, (size_t)n - put,
                       (off_t)off + (off_t)put);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return errno == ENOSPC || errno == EDQUOT ? SQLITE_FULL
                                                : SQLITE_IOERR_WRITE;
    put += (size_t)r;
  }
  return SQLITE_OK;
}

static int fd_truncate(sqlite3_file *f, sqlite3_int64 size) {
  return ftruncate(((fd_file *)f)->fd, (off_t)size) == 0
             ? SQLITE_OK
             : SQLITE_IOERR_TRUNCATE;
}

static int fd_sync(sqlite3_file *f, int flags) {
  (void)f;
  (void)flags;
  return SQLITE_OK;
}

static int fd_size(sqlite3_file *f, sqlite3_int64 *size) {
  struct stat st;

  if (fstat(((fd_file *)f)->fd, &st) != 0)
    return SQLITE_IOERR_FSTAT;
  *size = (sqlite3_int64)st.st_size;
  return SQLITE_OK;
}

static int fd_lock(sqlite3_file *f, int level) {
  (void)f;
  (void)level;
  return SQLITE_OK;
}

static int fd_reserved(sqlite3_file *f, int *out) {
  (void)f;
  *out = 0;
  return SQLITE_OK;
}

static int fd_control(sqlite3_file *f, int op, void *arg) {
  (void)f;
  (void)op;
  (void)arg;
  return SQLITE_NOTFOUND;
}

static int fd_sector(sqlite3_file *f) {
  (void)f;
  return 4096;
}

static int fd_device(sqlite3_file *f) {
  (void)f;
  return 0;
}

/* Version 1: no shared memory, so SQLite never puts this file in WAL
 * mode, whatever the header it copies in says. */
static const sqlite3_io_methods fd_methods = {
    .iVersion = 1,
    .xClose = fd_close,
    .xRead = fd_read,
    .xWrite = fd_write,
    .xTruncate = fd_truncate,
    .xSync = fd_sync,
    .xFileSize = fd_size,
    .xLock = fd_lock,
    .xUnlock = fd_lock,
    .xCheckReservedLock = fd_reserved,
    .xFileControl = fd_control,
    .xSectorSize = fd_sector,
    .xDeviceCharacteristics = fd_device,
};

/* Names are "fd-N".  Only the main database is ever opened: the
 * connection keeps no journal and no temporary files on disk. */
static int vfs_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f,
                    int flags, int *out_flags) {
  fd_file *ff = (fd_file *)f;
  char *end;
  long fd;

  (void)vfs;
  f->pMethods = NULL;
  if (name == NULL || (flags & SQLITE_OPEN_MAIN_DB) == 0 ||
      strncmp(name, "fd-", 3) != 0)
    return SQLITE_CANTOPEN;
  fd = strtol(name + 3, &end, 10);
  if (*end != '\0' || fd < 0 || fd > 0x7fffffff)
    return SQLITE_CANTOPEN;
  ff->fd = (int)fd;
  f->pMethods = &fd_methods;
  if (out_flags != NULL)
    *out_flags = flags;
  return SQLITE_OK;
}

static int vfs_delete(sqlite3_vfs *vfs, const char *name, int sync) {
  (void)vfs;
  (void)name;
  (void)sync;
  return SQLITE_IOERR_DELETE;
}

static int vfs_access(sqlite3_vfs *vfs, const char *name, int flags,
                      int *out) {
  (void)vfs;
  (void)name;
  (void)flags;
  *out = 0; /* no journal, no WAL: nothing beside the file exists */
  return SQLITE_OK;
}

static int vfs_full(sqlite3_vfs *vfs, const char *name, int n, char *out) {
  (void)vfs;
  if ((int)strlen(name) >= n)
    return SQLITE_CANTOPEN;
  strcpy(out, name);
  return SQLITE_OK;
}

/* Time, sleep and randomness are the default VFS's. */
static int vfs_random(sqlite3_vfs *vfs, int n, char *out) {
  sqlite3_vfs *d = vfs->pAppData;
  return d->xRandomness(d, n, out);
}

static int vfs_sleep(sqlite3_vfs *vfs, int us) {
  sqlite3_vfs *d = vfs->pAppData;
  return d->xSleep(d, us);
}

static int vfs_time(sqlite3_vfs *vfs, double *out) {
  sqlite3_vfs *d = vfs->pAppData;
  return d->xCurrentTime(d, out);
}

static int vfs_error(sqlite3_vfs *vfs, int n, char *out) {
  (void)vfs;
  if (n > 0)
    out[0] = '\0';
  return 0;
}

static sqlite3_vfs fd_vfs = {
    .iVersion = 1,
    .szOsFile = sizeof(fd_file),
    .mxPathname = 32,
    .zName = VFS_NAME,
    .xOpen = vfs_open,
    .xDelete = vfs_delete,
    .xAccess = vfs_access,
    .xFullPathname = vfs_full,
    .xRandomness = vfs_random,
    .xSleep = vfs_sleep,
    .xCurrentTime = vfs_time,
    .xGetLastError = vfs_error,
};

static uv_once_t vfs_once = UV_ONCE_INIT;
static int vfs_status;

static void vfs_register(void) {
  fd_vfs.pAppData = sqlite3_vfs_find(NULL);
  vfs_status = fd_vfs.pAppData != NULL ? sqlite3_vfs_register(&fd_vfs, 0)
                                       : SQLITE_ERROR;
}

static int stopped(const int *stop, const int *closing) {
  return __atomic_load_n(stop, __ATOMIC_ACQUIRE) != 0 ||
         __atomic_load_n(closing, __ATOMIC_ACQUIRE) != 0;
}

static int fail(int rc, sqlite3 *db, const char *what, char *msg,
                size_t msg_size) {
  snprintf(msg, msg_size, "%s: %s", what,
           db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  return rc;
}

/* Makes the copy a file of its own.  Its header still says WAL, as the
 * source's does, which would have whoever opens it look for a log beside
 * it: it is set to the rollback journal's format (the plugin puts a
 * database it opens in WAL mode itself).  And it gets a history id of
 * its own: once restored it gives out revisions again from its own, and a
 * watcher's resume point from the original, past them, must not be taken
 * for one of its changes. */
static int finish_copy(int fd, const char *name, char *msg,
                       size_t msg_size) {
  static const unsigned char rollback[2] = {1, 1};
  sqlite3 *db = NULL;
  int rc;

  if (pwrite(fd, rollback, 2, 18) != 2) {
    snprintf(msg, msg_size, "cannot write the copy's header: %s",
             strerror(errno));
    return errno == ENOSPC ? SQLITE_FULL : SQLITE_IOERR_WRITE;
  }
  rc = sqlite3_open_v2(name, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                       VFS_NAME);
  if (rc == SQLITE_OK)
    rc = sqlite3_exec(db,
                      "PRAGMA journal_mode = OFF; "
                      "UPDATE meta SET value = abs(random()) "
                      "WHERE name = 'history_id'",
                      NULL, NULL, NULL);
  if (rc != SQLITE_OK)
    rc = fail(rc, db, "cannot give the copy its history id", msg, msg_size);
  sqlite3_close(db);
  return rc;
}

int sq_copy(const char *path, int fd, const int *stop, const int *closing,
            uint64_t *revision, char *msg, size_t msg_size) {
  sqlite3 *src = NULL, *dst = NULL;
  sqlite3_stmt *st = NULL;
  sqlite3_backup *bk;
  char name[32];
  int rc;

  msg[0] = '\0';
  *revision = 0;
  uv_once(&vfs_once, vfs_register);
  if (vfs_status != SQLITE_OK)
    return fail(vfs_status, NULL, "cannot register the copy's VFS", msg,
                msg_size);
  rc = sqlite3_open_v2(path, &src, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                       NULL);
  if (rc != SQLITE_OK) {
    rc = fail(rc, src, "cannot open the database", msg, msg_size);
    goto out;
  }
  sqlite3_busy_timeout(src, 5000);
  /* One read transaction from the revision to the last page: the copy
   * holds exactly the changes up to that revision. */
  if ((rc = sqlite3_exec(src, "BEGIN", NULL, NULL, NULL)) != SQLITE_OK ||
      (rc = sqlite3_prepare_v2(src, SQLITE_REVISION_SQL, -1, &st,
                               NULL)) != SQLITE_OK) {
    rc = fail(rc, src, "cannot read the database", msg, msg_size);
    goto out;
  }
  if ((rc = sqlite3_step(st)) != SQLITE_ROW) {
    rc = fail(rc == SQLITE_DONE ? SQLITE_CORRUPT : rc, src,
              "cannot read the revision", msg, msg_size);
    goto out;
  }
  *revision = (uint64_t)sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  st = NULL;

  snprintf(name, sizeof(name), "fd-%d", fd);
  rc = sqlite3_open_v2(name, &dst,
                       SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                           SQLITE_OPEN_NOMUTEX,
                       VFS_NAME);
  if (rc == SQLITE_OK)
    rc = sqlite3_exec(dst, "PRAGMA journal_mode = OFF", NULL, NULL, NULL);
  if (rc != SQLITE_OK) {
    rc = fail(rc, dst, "cannot open the copy", msg, msg_size);
    goto out;
  }
  if ((bk = sqlite3_backup_init(dst, "main", src, "main")) == NULL) {
    rc = fail(sqlite3_errcode(dst), dst, "cannot begin the copy", msg,
              msg_size);
    goto out;
  }
  do {
    if (stopped(stop, closing)) {
      sqlite3_backup_finish(bk);
      rc = SQLITE_INTERRUPT;
      snprintf(msg, msg_size, "stopped");
      goto out;
    }
    rc = sqlite3_backup_step(bk, PAGES_PER_STEP);
  } while (rc == SQLITE_OK);
  /* The pages are copied by now; finish reports a failure of the last
   * write to the copy. */
  if (rc == SQLITE_DONE)
    rc = sqlite3_backup_finish(bk);
  else
    sqlite3_backup_finish(bk);
  if (rc != SQLITE_OK) {
    rc = fail(rc, dst, "copy failed", msg, msg_size);
    goto out;
  }
  sqlite3_close(dst);
  dst = NULL;
  rc = finish_copy(fd, name, msg, msg_size);

out:
  sqlite3_finalize(st);
  if (dst != NULL)
    sqlite3_close(dst);
  if (src != NULL) {
    sqlite3_exec(src, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(src);
  }
  if (rc != SQLITE_OK)
    *revision = 0;
  return rc;
}
