/* util.c - error names, the default socket path and peer id text forms:
 * public calls of libpeerstore that need no connection (the service
 * links this file too, for the same names and the same socket rule). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peerstore.h"
#include "text.h"

const char *peerstore_strerror(int status) {
  switch (status) {
  case 0:
    return "success";
#define PEERSTORE_STRERROR_CASE(name, val, msg)                                \
  case (val):                                                                  \
    return msg;
    PEERSTORE_ERRNO_MAP(PEERSTORE_STRERROR_CASE)
#undef PEERSTORE_STRERROR_CASE
  default:
    /* libuv statuses pass through unchanged; let libuv name its own. */
    return status < 0 && status > -4096 ? uv_strerror(status)
                                        : "unknown error";
  }
}

const char *peerstore_err_name(int status) {
  switch (status) {
  case 0:
    return "PEERSTORE_OK";
#define PEERSTORE_ERRNAME_CASE(name, val, msg)                                 \
  case (val):                                                                  \
    return "PEERSTORE_" #name;
    PEERSTORE_ERRNO_MAP(PEERSTORE_ERRNAME_CASE)
#undef PEERSTORE_ERRNAME_CASE
  default:
    return status < 0 && status > -4096 ? uv_err_name(status)
                                        : "PEERSTORE_EUNKNOWN";
  }
}

int peerstore_default_socket_path(char *buf, size_t size) {
  const char *p = getenv("PEERSTORE_SOCKET");
  const char *x = getenv("XDG_RUNTIME_DIR");
  int n;

  if (p != NULL && *p != '\0')
    n = snprintf(buf, size, "%s", p);
  else if (x != NULL && *x != '\0')
    n = snprintf(buf, size, "%s/peerstore.sock", x);
  else
    n = snprintf(buf, size, "/run/peerstore/peerstore.sock");
  return (n < 0 || (size_t)n >= size) ? PEERSTORE_ETOOBIG : 0;
}

/* ------------------------------------------------------------------ */
/* Peer ids                                                            */

static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/* Bits are taken most significant first and the last group is padded
 * with zero bits, as GNUnet's GNUNET_STRINGS_data_to_string does. */
void peerstore_peer_to_string(const peerstore_peer_id *peer, char *out) {
  unsigned bits = 0, acc = 0;
  size_t i, o = 0;

  for (i = 0; i < PEERSTORE_PEER_ID_SIZE; i++) {
    acc = (acc << 8) | peer->bytes[i];
    bits += 8;
    while (bits >= 5) {
      out[o++] = b32[(acc >> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0)
    out[o++] = b32[(acc << (5 - bits)) & 31];
  out[o] = '\0';
}

static int b32_value(char ch) {
  if (ch >= 'a' && ch <= 'z')
    ch = (char)(ch - 'a' + 'A');
  switch (ch) {
  case 'O': return 0;
  case 'I': case 'L': return 1;
  case 'U': return -1;
  default: break;
  }
  {
    const char *p = strchr(b32, ch);
    return (p != NULL && ch != '\0') ? (int)(p - b32) : -1;
  }
}

int peerstore_peer_from_string(const char *s, peerstore_peer_id *peer) {
  size_t n, i, o = 0;
  unsigned bits = 0, acc = 0;

  if (s == NULL || peer == NULL)
    return PEERSTORE_EINVAL;
  n = strlen(s);
  if (n == PEERSTORE_PEER_HEX_LEN)
    return peerstore__hex_decode(s, peer->bytes, PEERSTORE_PEER_ID_SIZE) == 0
               ? 0
               : PEERSTORE_EINVAL;
  if (n != PEERSTORE_PEER_B32_LEN)
    return PEERSTORE_EINVAL;
  for (i = 0; i < n; i++) {
    int v = b32_value(s[i]);
    if (v < 0)
      return PEERSTORE_EINVAL;
    acc = (acc << 5) | (unsigned)v;
    bits += 5;
    if (bits >= 8) {
      peer->bytes[o++] = (uint8_t)(acc >> (bits - 8));
      bits -= 8;
      acc &= (1u << bits) - 1;
    }
  }
  /* 52 x 5 = 260 bits: the 4 padding bits must be zero, so that every id
   * has exactly one spelling. */
  return acc == 0 ? 0 : PEERSTORE_EINVAL;
}
