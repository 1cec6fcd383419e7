/* backup.c - BACKUP: a consistent copy of the store, made by the plugin
 * into a file of the service's and streamed to the client.
 *
 * The client cannot hand the service a file to write (the socket carries
 * bytes, and a path would be opened with the service's rights, not the
 * client's), and the plugin's copy must not wait on a client that reads
 * slowly: a long read transaction holds back the database's checkpoints.
 * So the plugin writes the whole copy at its own pace into an unnamed
 * file in backup_dir (by default the database's directory), and the copy
 * is then read back a piece at a time and sent as BACKUP_DATA, paced like
 * an iteration: by the client's credit and by its queued output.  The
 * file has no name, so nothing is left behind whatever happens to the
 * service; closing it frees the space.
 *
 * Who: a backup rewrites the whole database into a file, so it is not for
 * every client that may connect - only root, the service's own user, and
 * those backup_allow names (refused with PEERSTORE_EACCES).
 *
 * Limits: one backup at a time in the whole service (a second one is
 * refused with PEERSTORE_ELIMIT; it takes a database's worth of disk);
 * one whose client has not taken a piece for iteration_timeout ends with
 * PEERSTORE_ETIMEDOUT; and one is refused with PEERSTORE_ENOSPC, before
 * anything is written, when its directory has no room for a copy of the
 * database with an eighth to spare.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "service.h"

#define CREDIT_MAX (1u << 16)

struct sbackup {
  client *c;
  uint32_t request;
  uint32_t credit; /* pieces the client is ready for */
  int fd;
  int stop; /* the plugin's thread reads it */
  uint64_t revision;
  uint64_t size;
  uint64_t offset;   /* of the next piece to send */
  uint64_t moved_ms; /* loop time the copy was made or a piece sent */
  unsigned copying : 1; /* the plugin's backup is outstanding */
  unsigned reading : 1; /* a read of the file is outstanding */
  unsigned ended : 1;
  uv_fs_t req;
  char piece[PEERSTORE_BACKUP_PIECE];
};

static void backup_pump(sbackup *b);

/* Answers request with BACKUP_END and a reason, logged as well. */
static void reply(client *c, uint32_t request, int status, uint64_t revision,
                  uint64_t size, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static void reply(client *c, uint32_t request, int status, uint64_t revision,
                  uint64_t size, const char *fmt, ...) {
  char reason[512] = "";
  va_list ap;

  if (fmt != NULL) {
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    LOG_WARN("client %llu (uid %u): backup: %s", (unsigned long long)c->id,
             (unsigned)c->uid, reason);
  }
  if (c->closing)
    return;
  if (peerstore__put_backup_end(&c->out.buf, request, status, revision, size,
                                reason) != 0) {
    client_fail(c, PEERSTORE_ENOMEM, "out of memory");
    return;
  }
  client_output_ready(c);
}

static void backup_free(sbackup *b) {
  client *c = b->c;

  close(b->fd);
  c->srv->backup = NULL;
  client_unref(c);
  free(b);
}

/* The plugin's copy or a read of the file is in flight: shutdown waits
 * for it, since the plugin is closed only once nothing is. */
static void busy(sbackup *b, int on) {
  server *s = b->c->srv;

  if (on) {
    s->inflight++;
    return;
  }
  s->inflight--;
  if (s->stopping)
    server_kick(s);
}

/* Ends the backup: a reply (unless silent: a cancel, a client gone), the
 * plugin told to stop, and the file closed once nothing uses it. */
static void backup_end(sbackup *b, int status, int silent, const char *fmt,
                       ...) __attribute__((format(printf, 4, 5)));

static void backup_end(sbackup *b, int status, int silent, const char *fmt,
                       ...) {
  char reason[512];
  va_list ap;

  if (b->ended)
    return;
  b->ended = 1;
  __atomic_store_n(&b->stop, 1, __ATOMIC_RELEASE);
  if (!silent) {
    /* A revision and a size only for a copy sent whole. */
    uint64_t rev = status == 0 ? b->revision : 0;
    uint64_t size = status == 0 ? b->size : 0;
    if (fmt != NULL) {
      va_start(ap, fmt);
      vsnprintf(reason, sizeof(reason), fmt, ap);
      va_end(ap);
      reply(b->c, b->request, status, rev, size, "%s", reason);
    } else {
      reply(b->c, b->request, status, rev, size, NULL);
    }
  }
  if (!b->copying && !b->reading)
    backup_free(b);
}

static void on_read(uv_fs_t *req) {
  sbackup *b = req->data;
  client *c = b->c;
  ssize_t n = req->result;

  uv_fs_req_cleanup(req);
  b->reading = 0;
  busy(b, 0);
  if (b->ended) {
    backup_free(b);
    return;
  }
  if (n <= 0) {
    backup_end(b, n < 0 ? (int)n : PEERSTORE_EIO, 0,
               "cannot read the copy back: %s",
               n < 0 ? uv_strerror((int)n) : "it is shorter than it was");
    return;
  }
  if (peerstore__put_backup_data(&c->out.buf, b->request, b->piece,
                                 (size_t)n) != 0) {
    backup_end(b, PEERSTORE_ENOMEM, 0, NULL);
    return;
  }
  b->offset += (uint64_t)n;
  b->credit--;
  b->moved_ms = uv_now(c->srv->loop);
  c->srv->stats.backup_bytes += (uint64_t)n;
  client_output_ready(c);
  backup_pump(b);
}

static void backup_pump(sbackup *b) {
  client *c = b->c;
  uv_buf_t buf;
  uint64_t left;
  int r;

  if (b->ended || b->copying || b->reading || c->closing)
    return;
  if (b->offset == b->size) {
    c->srv->stats.backups++;
    LOG_INFO("client %llu (uid %u): backup of revision %llu sent, %llu "
             "bytes",
             (unsigned long long)c->id, (unsigned)c->uid,
             (unsigned long long)b->revision, (unsigned long long)b->size);
    backup_end(b, 0, 0, NULL);
    return;
  }
  /* Bounded like an iteration: this piece may take the output past the
   * limit, the next one waits for it to drain. */
  if (b->credit == 0 || !client_output_ok(c, OUT_ITERATE, 0))
    return;
  left = b->size - b->offset;
  buf = uv_buf_init(b->piece, left < sizeof(b->piece) ? (unsigned)left
                                                      : sizeof(b->piece));
  b->req.data = b;
  r = uv_fs_read(c->srv->loop, &b->req, b->fd, &buf, 1, (int64_t)b->offset,
                 on_read);
  if (r != 0) {
    backup_end(b, r, 0, "cannot read the copy back: %s", uv_strerror(r));
    return;
  }
  b->reading = 1;
  busy(b, 1);
}

static void copy_done(void *arg, int status, uint64_t revision) {
  sbackup *b = arg;
  struct stat st;

  b->copying = 0;
  busy(b, 0);
  if (b->ended) {
    backup_free(b);
    return;
  }
  if (status != 0) {
    backup_end(b, status, 0, "the plugin could not make the copy: %s",
               peerstore_strerror(status));
    return;
  }
  if (fstat(b->fd, &st) != 0) {
    backup_end(b, -errno, 0, "cannot read the copy back: %s",
               strerror(errno));
    return;
  }
  b->revision = revision;
  b->size = (uint64_t)st.st_size;
  b->moved_ms = uv_now(b->c->srv->loop);
  backup_pump(b);
}

/* Where copies are made: backup_dir, or the database's directory. */
static void copy_dir(const config *cfg, char *out, size_t size) {
  const char *slash;

  if (cfg->backup_dir != NULL) {
    snprintf(out, size, "%s", cfg->backup_dir);
  } else if (cfg->database != NULL &&
             (slash = strrchr(cfg->database, '/')) != NULL) {
    snprintf(out, size, "%.*s",
             slash == cfg->database ? 1 : (int)(slash - cfg->database),
             cfg->database);
  } else {
    snprintf(out, size, ".");
  }
}

/* An unnamed file in dir; falls back to a named one, unlinked at once,
 * where the file system has no O_TMPFILE.  A descriptor or -errno. */
static int unnamed_file(const char *dir) {
  char path[4096];
  int fd;

#ifdef O_TMPFILE
  fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0)
    return fd;
  if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
    return -errno;
#endif
  if (snprintf(path, sizeof(path), "%s/.peerstore-backup-XXXXXX", dir) >=
      (int)sizeof(path))
    return -ENAMETOOLONG;
  if ((fd = mkostemp(path, O_CLOEXEC)) < 0)
    return -errno;
  unlink(path);
  return fd;
}

/* Bytes the copy may take: the database and its write-ahead log. */
static uint64_t copy_size(const config *cfg) {
  char wal[4096];
  struct stat st;
  uint64_t n = 0;

  if (cfg->database == NULL)
    return 0;
  if (stat(cfg->database, &st) == 0)
    n += (uint64_t)st.st_size;
  snprintf(wal, sizeof(wal), "%s-wal", cfg->database);
  if (stat(wal, &st) == 0)
    n += (uint64_t)st.st_size;
  return n;
}

int backup_start(client *c, const peerstore__header *h, const uint8_t *body) {
  server *s = c->srv;
  const peerstore_plugin_ops *ops = s->plugin.desc->ops;
  char dir[4096];
  struct statvfs vfs;
  uint64_t need, room;
  uint32_t credit;
  sbackup *b;
  int fd, r;

  if (c->version < 4 ||
      peerstore__wire_u32(body, h->body_len, &credit) != 0)
    return PEERSTORE_EPROTO;
  if (s->stopping) {
    reply(c, h->request, PEERSTORE_ESHUTDOWN, 0, 0, NULL);
    return 0;
  }
  if (c->uid != 0 && c->uid != getuid() &&
      !config_id_match(&s->cfg->backup_uids, &s->cfg->backup_gids,
                       (uint32_t)c->uid, (uint32_t)c->gid)) {
    s->stats.refused++;
    reply(c, h->request, PEERSTORE_EACCES, 0, 0,
          "backups are for root, the service's user and those "
          "backup_allow names (uid %u gid %u is not)",
          (unsigned)c->uid, (unsigned)c->gid);
    return 0;
  }
  if (ops->backup == NULL) {
    reply(c, h->request, PEERSTORE_EPLUGIN, 0, 0,
          strcmp(s->plugin.desc->name, "memory") == 0
              ? "the memory plugin keeps nothing on disk to copy "
                "(peerstore export writes its records out)"
              : "the %s plugin does not make copies (back its database up "
                "with the database's own tools, or use peerstore export)",
          s->plugin.desc->name);
    return 0;
  }
  if (s->backup != NULL) {
    s->stats.limited++;
    reply(c, h->request, PEERSTORE_ELIMIT, 0, 0,
          "another backup is under way (client %llu); one at a time",
          (unsigned long long)s->backup->c->id);
    return 0;
  }
  copy_dir(s->cfg, dir, sizeof(dir));
  need = copy_size(s->cfg);
  if (statvfs(dir, &vfs) == 0) {
    room = (uint64_t)vfs.f_bavail * (uint64_t)vfs.f_frsize;
    if (room < need + need / 8) {
      reply(c, h->request, PEERSTORE_ENOSPC, 0, 0,
            "no room in %s for the copy: it takes up to %llu MiB, %llu MiB "
            "are free (backup_dir puts it elsewhere)",
            dir, (unsigned long long)(need >> 20),
            (unsigned long long)(room >> 20));
      return 0;
    }
  }
  if ((fd = unnamed_file(dir)) < 0) {
    /* The service's directory, not the client's doing: ENOENT or EACCES
     * would read as the service not being there or refusing the user. */
    reply(c, h->request, fd == -ENOSPC ? PEERSTORE_ENOSPC : PEERSTORE_EIO,
          0, 0, "cannot make a file for the copy in %s: %s", dir,
          strerror(-fd));
    return 0;
  }
  if ((b = calloc(1, sizeof(*b))) == NULL) {
    close(fd);
    return PEERSTORE_ENOMEM;
  }
  b->c = c;
  b->request = h->request;
  b->credit = credit < CREDIT_MAX ? credit : CREDIT_MAX;
  b->fd = fd;
  b->copying = 1;
  client_ref(c);
  s->backup = b;
  busy(b, 1);
  LOG_INFO("client %llu (uid %u): backup begun in %s",
           (unsigned long long)c->id, (unsigned)c->uid, dir);
  r = ops->backup(s->plugin.instance, fd, &b->stop, copy_done, b);
  if (r != 0) {
    b->copying = 0;
    busy(b, 0);
    backup_end(b, r, 0, "the plugin could not begin the copy: %s",
               peerstore_strerror(r));
  }
  return 0;
}

static sbackup *backup_of(client *c, uint32_t request) {
  sbackup *b = c->srv->backup;

  return b != NULL && b->c == c && b->request == request && !b->ended ? b
                                                                      : NULL;
}

int backup_credit(client *c, uint32_t request, uint32_t more) {
  sbackup *b = backup_of(c, request);

  if (b == NULL)
    return 0;
  b->credit = CREDIT_MAX - b->credit < more ? CREDIT_MAX : b->credit + more;
  backup_pump(b);
  return 1;
}

int backup_cancel(client *c, uint32_t request) {
  sbackup *b = backup_of(c, request);

  if (b == NULL)
    return 0;
  backup_end(b, 0, 1, NULL);
  return 1;
}

void backup_pump_client(client *c) {
  sbackup *b = c->srv->backup;

  if (b != NULL && b->c == c)
    backup_pump(b);
}

void backup_end_client(client *c, int status) {
  sbackup *b = c->srv->backup;

  if (b != NULL && b->c == c)
    backup_end(b, status, status == 0, NULL);
}

/* Until its file is closed: what the service holds for it, not only
 * whether it goes on. */
int backup_running(const server *s) { return s->backup != NULL; }

void backup_check_idle(server *s) {
  sbackup *b = s->backup;
  uint64_t now = uv_now(s->loop);

  /* The copy itself and a read of it are the service's time. */
  if (b == NULL || b->ended || b->copying || b->reading ||
      now - b->moved_ms < s->cfg->iteration_timeout_ms)
    return;
  s->stats.iterations_timed_out++;
  backup_end(b, PEERSTORE_ETIMEDOUT, 0,
             "not read for %llu s (%s); ending it",
             (unsigned long long)((now - b->moved_ms) / 1000),
             b->credit == 0 ? "no credit" : "output not read");
}
