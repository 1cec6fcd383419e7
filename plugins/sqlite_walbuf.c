/* sqlite_walbuf.c - a VFS over the default one that writes a connection's
 * write-ahead log in one write per commit.
 *
 * SQLite appends a transaction to the log a frame at a time, and each
 * frame is two writes: its 24-byte header, then the page.  A store that
 * changes eleven pages cost twenty-two pwrite calls, and on the machines
 * this runs on a system call is a few microseconds: most of an awaited
 * store (bench/README.md, issue 15).  This VFS gathers the log's writes
 * while they are contiguous and writes them at once when the frame that
 * ends a transaction is whole: a commit frame is the one whose header
 * carries the database size (bytes 4-7, non-zero), and its page is the
 * write after that header.
 *
 * What keeps it correct:
 * - A commit's frames are written before the write of its last page
 *   returns, so before SQLite makes the commit visible in the wal-index
 *   (other connections read only frames the index shows) and an error
 *   fails the commit as a failed write would.  NORMAL's promise - an
 *   acknowledged store is in the operating system's hands - holds.
 * - Anything else that looks at the log sees it whole: a read, a sync, a
 *   size, a truncate and a close of the log write what is gathered first,
 *   as do the database file's wal-index locks and barriers (the log's
 *   database file is found through sqlite3_filename_database), so frames
 *   a transaction wrote and then rolled back are on disk before its write
 *   lock is let go and another writer may reuse their place.
 * - A write that does not continue the one before it (a log started
 *   over, a frame rewritten in place, checksums rewritten after a commit
 *   frame) writes the gathered range and then itself, at once: writes
 *   reach the file in the order SQLite made them, and each one SQLite
 *   checks has been made.
 * Every other file is the default VFS's own, untouched; a log whose
 * database is not found is written through, a write at a time.
 */
#include "sqlite_walbuf.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#define WALBUF_NAME "peerstore-walbuf"
/* Gathered bytes past which they are written anyway. */
#define WALBUF_CAP (1u << 20)
#define WAL_FRAME_HEADER 24

typedef struct wb_file wb_file;
struct wb_file {
  sqlite3_file base;  /* pMethods: db_methods or wal_methods */
  sqlite3_file *real; /* the default VFS's file, after this struct */
  wb_file *link;      /* a database's log, a log's database */
  wb_file *next;      /* the open databases */
  const char *name;   /* a database's name, as SQLite passed it */
  unsigned char *buf; /* a log's gathered writes: from off, len bytes */
  size_t len, cap;
  sqlite3_int64 off;
  sqlite3_int64 end; /* where the last write to the log ended */
  int commit_header; /* the last write was the header of a commit frame */
};

static sqlite3_vfs wb_vfs;
static wb_file *databases; /* under databases_lock */
static pthread_mutex_t databases_lock = PTHREAD_MUTEX_INITIALIZER;

#define REAL(f) (((wb_file *)(f))->real)
#define RM(f) (REAL(f)->pMethods)

/* Writes what is gathered, in pieces the default VFS takes whole (its
 * unix write masks a length to 17 bits, so it cannot be given 128 KiB or
 * more at once). */
#define WALBUF_PIECE 65536

static int wb_flush(wb_file *w) {
  size_t done, n;
  int rc = SQLITE_OK;

  if (w == NULL)
    return SQLITE_OK;
  for (done = 0; done < w->len && rc == SQLITE_OK; done += n) {
    n = w->len - done < WALBUF_PIECE ? w->len - done : WALBUF_PIECE;
    rc = w->real->pMethods->xWrite(w->real, w->buf + done, (int)n,
                                   w->off + (sqlite3_int64)done);
  }
  w->len = 0;
  return rc;
}

/* ------------------------------------------------------------------ */
/* The log                                                             */

/* Writes what is gathered, then this write: in order, and at once. */
static int wb_write_now(wb_file *w, const void *data, int amt,
                        sqlite3_int64 off) {
  int rc = wb_flush(w);

  return rc != SQLITE_OK ? rc
                          : w->real->pMethods->xWrite(w->real, data, amt, off);
}

static int wal_write(sqlite3_file *f, const void *data, int amt,
                     sqlite3_int64 off) {
  wb_file *w = (wb_file *)f;
  const unsigned char *d = data;
  int header = amt == WAL_FRAME_HEADER, appends = off == w->end;
  int ends = !header && w->commit_header;

  w->commit_header =
      header && (d[4] != 0 || d[5] != 0 || d[6] != 0 || d[7] != 0);
  w->end = off + amt;
  /* A log started over (its header at 0), a frame written again in
   * place, or headers whose checksums are rewritten after the commit
   * frame: SQLite checks each of these writes. */
  if (w->link == NULL || !appends)
    return wb_write_now(w, data, amt, off);
  if (w->len + (size_t)amt > w->cap) {
    size_t cap = w->cap ? w->cap : 65536;
    unsigned char *b;

    while (cap < w->len + (size_t)amt && cap < WALBUF_CAP)
      cap *= 2;
    /* Too much at once, or no memory: without gathering. */
    if (w->len + (size_t)amt > cap || (b = realloc(w->buf, cap)) == NULL)
      return wb_write_now(w, data, amt, off);
    w->buf = b;
    w->cap = cap;
  }
  if (w->len == 0)
    w->off = off;
  memcpy(w->buf + w->len, data, (size_t)amt);
  w->len += (size_t)amt;
  return ends ? wb_flush(w) : SQLITE_OK;
}

static int wal_read(sqlite3_file *f, void *data, int amt, sqlite3_int64 off) {
  int rc = wb_flush((wb_file *)f);

  return rc != SQLITE_OK ? rc : RM(f)->xRead(REAL(f), data, amt, off);
}

static int wal_truncate(sqlite3_file *f, sqlite3_int64 size) {
  int rc = wb_flush((wb_file *)f);

  return rc != SQLITE_OK ? rc : RM(f)->xTruncate(REAL(f), size);
}

static int wal_sync(sqlite3_file *f, int flags) {
  int rc = wb_flush((wb_file *)f);

  return rc != SQLITE_OK ? rc : RM(f)->xSync(REAL(f), flags);
}

static int wal_size(sqlite3_file *f, sqlite3_int64 *size) {
  int rc = wb_flush((wb_file *)f);

  return rc != SQLITE_OK ? rc : RM(f)->xFileSize(REAL(f), size);
}

static int wal_close(sqlite3_file *f) {
  wb_file *w = (wb_file *)f;
  int rc = wb_flush(w), rc2;

  pthread_mutex_lock(&databases_lock);
  if (w->link != NULL)
    w->link->link = NULL;
  pthread_mutex_unlock(&databases_lock);
  free(w->buf);
  rc2 = RM(f)->xClose(REAL(f));
  return rc != SQLITE_OK ? rc : rc2;
}

/* ------------------------------------------------------------------ */
/* The database                                                        */

static int db_close(sqlite3_file *f) {
  wb_file *p = (wb_file *)f, **pp;

  pthread_mutex_lock(&databases_lock);
  for (pp = &databases; *pp != NULL; pp = &(*pp)->next)
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  if (p->link != NULL)
    p->link->link = NULL; /* its log writes through from now on */
  pthread_mutex_unlock(&databases_lock);
  return RM(f)->xClose(REAL(f));
}

static int db_shm_lock(sqlite3_file *f, int offset, int n, int flags) {
  int rc = wb_flush(((wb_file *)f)->link);

  /* SQLite does not look at what an unlock returns: the lock is let go
   * whatever happened.  What a failed write lost was not committed (a
   * commit's frames are written with its last page), and wb_flush has
   * dropped it. */
  if (rc != SQLITE_OK && (flags & SQLITE_SHM_UNLOCK) == 0)
    return rc;
  return RM(f)->xShmLock(REAL(f), offset, n, flags);
}

static void db_shm_barrier(sqlite3_file *f) {
  /* Commits were written with their last page; what is left here is not
   * part of one, and a barrier cannot fail. */
  (void)wb_flush(((wb_file *)f)->link);
  RM(f)->xShmBarrier(REAL(f));
}

/* ------------------------------------------------------------------ */
/* Calls passed on as they are                                         */

static int fw_read(sqlite3_file *f, void *d, int n, sqlite3_int64 o) {
  return RM(f)->xRead(REAL(f), d, n, o);
}
static int fw_write(sqlite3_file *f, const void *d, int n, sqlite3_int64 o) {
  return RM(f)->xWrite(REAL(f), d, n, o);
}
static int fw_truncate(sqlite3_file *f, sqlite3_int64 s) {
  return RM(f)->xTruncate(REAL(f), s);
}
static int fw_sync(sqlite3_file *f, int flags) {
  return RM(f)->xSync(REAL(f), flags);
}
static int fw_size(sqlite3_file *f, sqlite3_int64 *s) {
  return RM(f)->xFileSize(REAL(f), s);
}
static int fw_lock(sqlite3_file *f, int l) { return RM(f)->xLock(REAL(f), l); }
static int fw_unlock(sqlite3_file *f, int l) {
  return RM(f)->xUnlock(REAL(f), l);
}
static int fw_check(sqlite3_file *f, int *out) {
  return RM(f)->xCheckReservedLock(REAL(f), out);
}
static int fw_control(sqlite3_file *f, int op, void *arg) {
  return RM(f)->xFileControl(REAL(f), op, arg);
}
static int fw_sector(sqlite3_file *f) { return RM(f)->xSectorSize(REAL(f)); }
static int fw_device(sqlite3_file *f) {
  return RM(f)->xDeviceCharacteristics(REAL(f));
}
static int fw_shm_map(sqlite3_file *f, int pg, int sz, int ext,
                      void volatile **p) {
  return RM(f)->xShmMap(REAL(f), pg, sz, ext, p);
}
static int fw_shm_lock(sqlite3_file *f, int offset, int n, int flags) {
  return RM(f)->xShmLock(REAL(f), offset, n, flags);
}
static void fw_shm_barrier(sqlite3_file *f) { RM(f)->xShmBarrier(REAL(f)); }
static int fw_shm_unmap(sqlite3_file *f, int del) {
  return RM(f)->xShmUnmap(REAL(f), del);
}
static int fw_fetch(sqlite3_file *f, sqlite3_int64 o, int n, void **p) {
  return RM(f)->xFetch(REAL(f), o, n, p);
}
static int fw_unfetch(sqlite3_file *f, sqlite3_int64 o, void *p) {
  return RM(f)->xUnfetch(REAL(f), o, p);
}

static const sqlite3_io_methods db_methods = {
    3,           db_close,  fw_read,     fw_write,     fw_truncate,
    fw_sync,     fw_size,   fw_lock,     fw_unlock,    fw_check,
    fw_control,  fw_sector, fw_device,   fw_shm_map,   db_shm_lock,
    db_shm_barrier, fw_shm_unmap, fw_fetch, fw_unfetch};

static const sqlite3_io_methods wal_methods = {
    3,          wal_close, wal_read,     wal_write,    wal_truncate,
    wal_sync,   wal_size,  fw_lock,      fw_unlock,    fw_check,
    fw_control, fw_sector, fw_device,    fw_shm_map,   fw_shm_lock,
    fw_shm_barrier, fw_shm_unmap, fw_fetch, fw_unfetch};

/* ------------------------------------------------------------------ */
/* The VFS                                                             */

#define RV(v) ((sqlite3_vfs *)(v)->pAppData)

static int wb_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *f,
                   int flags, int *out) {
  wb_file *p = (wb_file *)f, *d;
  const char *db;
  int rc;

  /* Journals and temporary files are the default VFS's, in place (this
   * VFS's files are larger than its). */
  if ((flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL)) == 0 || name == NULL)
    return RV(vfs)->xOpen(RV(vfs), name, f, flags, out);
  memset(p, 0, sizeof(*p));
  p->real = (sqlite3_file *)(p + 1);
  if ((rc = RV(vfs)->xOpen(RV(vfs), name, p->real, flags, out)) != SQLITE_OK)
    return rc; /* base.pMethods stays NULL: SQLite does not close it */
  if (p->real->pMethods->iVersion < 3) {
    /* Not the calls these methods pass on: the default VFS's, in place. */
    p->real->pMethods->xClose(p->real);
    memset(p, 0, sizeof(*p));
    return RV(vfs)->xOpen(RV(vfs), name, f, flags, out);
  }
  pthread_mutex_lock(&databases_lock);
  if (flags & SQLITE_OPEN_MAIN_DB) {
    p->name = name;
    p->next = databases;
    databases = p;
    p->base.pMethods = &db_methods;
  } else {
    db = sqlite3_filename_database(name);
    for (d = databases; d != NULL && d->name != db; d = d->next)
      ;
    if (d != NULL && d->link == NULL) {
      d->link = p;
      p->link = d;
    }
    p->base.pMethods = &wal_methods;
  }
  pthread_mutex_unlock(&databases_lock);
  return SQLITE_OK;
}

static int wb_delete(sqlite3_vfs *v, const char *n, int sync) {
  return RV(v)->xDelete(RV(v), n, sync);
}
static int wb_access(sqlite3_vfs *v, const char *n, int flags, int *out) {
  return RV(v)->xAccess(RV(v), n, flags, out);
}
static int wb_full(sqlite3_vfs *v, const char *n, int size, char *out) {
  return RV(v)->xFullPathname(RV(v), n, size, out);
}
static void *wb_dlopen(sqlite3_vfs *v, const char *n) {
  return RV(v)->xDlOpen(RV(v), n);
}
static void wb_dlerror(sqlite3_vfs *v, int n, char *msg) {
  RV(v)->xDlError(RV(v), n, msg);
}
static void (*wb_dlsym(sqlite3_vfs *v, void *h, const char *s))(void) {
  return RV(v)->xDlSym(RV(v), h, s);
}
static void wb_dlclose(sqlite3_vfs *v, void *h) { RV(v)->xDlClose(RV(v), h); }
static int wb_random(sqlite3_vfs *v, int n, char *out) {
  return RV(v)->xRandomness(RV(v), n, out);
}
static int wb_sleep(sqlite3_vfs *v, int us) { return RV(v)->xSleep(RV(v), us); }
static int wb_time(sqlite3_vfs *v, double *t) {
  return RV(v)->xCurrentTime(RV(v), t);
}
static int wb_error(sqlite3_vfs *v, int n, char *msg) {
  return RV(v)->xGetLastError(RV(v), n, msg);
}
static int wb_time64(sqlite3_vfs *v, sqlite3_int64 *t) {
  return RV(v)->xCurrentTimeInt64(RV(v), t);
}

static int registered; /* 1: registered, -1: could not be */

static void wb_register(void) {
  sqlite3_vfs *real = sqlite3_vfs_find(NULL);

  registered = -1;
  if (real == NULL || real->iVersion < 2)
    return;
  wb_vfs.iVersion = 2;
  wb_vfs.szOsFile = (int)((sizeof(wb_file) + 7) / 8 * 8) + real->szOsFile;
  wb_vfs.mxPathname = real->mxPathname;
  wb_vfs.zName = WALBUF_NAME;
  wb_vfs.pAppData = real;
  wb_vfs.xOpen = wb_open;
  wb_vfs.xDelete = wb_delete;
  wb_vfs.xAccess = wb_access;
  wb_vfs.xFullPathname = wb_full;
  wb_vfs.xDlOpen = wb_dlopen;
  wb_vfs.xDlError = wb_dlerror;
  wb_vfs.xDlSym = wb_dlsym;
  wb_vfs.xDlClose = wb_dlclose;
  wb_vfs.xRandomness = wb_random;
  wb_vfs.xSleep = wb_sleep;
  wb_vfs.xCurrentTime = wb_time;
  wb_vfs.xGetLastError = wb_error;
  wb_vfs.xCurrentTimeInt64 = wb_time64;
  if (sqlite3_vfs_register(&wb_vfs, 0) == SQLITE_OK)
    registered = 1;
}

const char *ps_walbuf_vfs(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;

  pthread_once(&once, wb_register);
  return registered == 1 ? WALBUF_NAME : NULL;
}
