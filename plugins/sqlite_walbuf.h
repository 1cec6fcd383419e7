/* sqlite_walbuf.h - a VFS that writes a connection's write-ahead log in one
 * write per commit (see sqlite_walbuf.c). */
#ifndef PEERSTORE_SQLITE_WALBUF_H
#define PEERSTORE_SQLITE_WALBUF_H

/* Registers the VFS (once; not as the default) and returns its name for
 * sqlite3_open_v2, or NULL if it could not be registered - then the
 * default VFS serves, one write per frame. */
const char *ps_walbuf_vfs(void);

#endif
