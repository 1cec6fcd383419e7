/* sqlite_copy.h - a consistent copy of a live SQLite database. */
#ifndef PEERSTORE_SQLITE_COPY_H
#define PEERSTORE_SQLITE_COPY_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

/* Copies the database at path, as one snapshot, into fd (an empty
 * regular file, open for reading and writing; left open).  Blocking, for
 * a thread of the caller's; the source is only read, through a
 * connection of its own, so writers go on meanwhile.  Between pieces of
 * about 1 MiB it looks at *stop and *closing and, if either is set,
 * gives up with SQLITE_INTERRUPT.  Returns SQLITE_OK with *revision the
 * meta table's revision in the snapshot, or an SQLite code with msg
 * saying what failed (fd then holds garbage). */
int sq_copy(const char *path, int fd, const int *stop, const int *closing,
            uint64_t *revision, char *msg, size_t msg_size);

#endif
