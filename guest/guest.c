/*
 * gangway test guest: a tiny multiboot kernel that fills its RAM with a known mix of
 * pages, dirties some at a set rate, and checks its own memory on request (after a
 * migration, say).
 *
 * Command line (the -append string; unknown words are ignored, numbers are decimal or 0x):
 *   seed=N     this VM's seed: unique pages depend on it              (default 1)
 *   image=N    "OS image" seed: shared pages depend only on it         (default 1)
 *   zero=PCT   share of pages left all-zero                            (default 25)
 *   shared=PCT share of pages identical across VMs of one image        (default 25)
 *              (dup=PCT is accepted as an alias)
 *   rate=N     unique pages rewritten per second                       (default 0)
 *
 * Memory: every page of usable RAM (multiboot memory map, type 1) from 2 MiB up to 4 GiB
 * is "managed". Page index = physical address / 4096 (= offset in a memory-backend-file).
 * Its kind comes from class_hash(image, index) % 100: below zero -> zero page; below
 * zero+shared -> shared page; else unique page. Non-zero pages are 1024 little-endian
 * u32 words:
 *   w[0] magic "GWSH" (shared) or "GWUN" (unique)
 *   w[1] page index
 *   w[2] version (shared: always 0; unique: 0 at boot, +1 on each rewrite)
 *   w[3] checksum: FNV-1a over words w[0], w[1], w[2], w[4..1023]
 *   w[4..1023] body: an LCG stream seeded by (kind, seed or image, index, version)
 * adapters/qemu/testGuest.ts mirrors these functions exactly; keep the two in step.
 *
 * Serial (COM1): prints "READY pages=<n> ..." once filled. Then one character per command:
 *   v  full self-check -> "VERIFY OK pages=<n> ..." or "VERIFY FAIL <count> first=<index>"
 *   p  pause dirtying  -> "PAUSED"
 *   r  resume          -> "RESUMED"
 *   s  status          -> "STATUS dirtied=<n> paused=<0|1> ticks=<ms>"
 * The PIT interrupts at ~1 kHz: it paces the dirtying and wakes the CPU from hlt, so an
 * idle guest costs the host (TCG) next to nothing.
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define PAGE_WORDS 1024u
#define FIRST_PAGE 512u /* 2 MiB: well clear of the kernel, its stack and the multiboot info */
#define MAGIC_SHARED 0x48535747u /* "GWSH" */
#define MAGIC_UNIQUE 0x4E555747u /* "GWUN" */
#define FNV_BASIS 2166136261u
#define FNV_PRIME 16777619u
#define TICK_HZ 1000u
#define PIT_HZ 1193182u
#define COM1 0x3F8
#define MAX_REGIONS 32

enum kind { KIND_ZERO, KIND_SHARED, KIND_UNIQUE };

/* ---- port I/O, serial ------------------------------------------------------------ */

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) {
  u8 v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}

static void serial_init(void) {
  outb(COM1 + 1, 0x00); /* no UART interrupts: the timer wakes us to poll */
  outb(COM1 + 3, 0x80); /* DLAB */
  outb(COM1 + 0, 0x01); /* 115200 baud */
  outb(COM1 + 1, 0x00);
  outb(COM1 + 3, 0x03); /* 8N1 */
  outb(COM1 + 2, 0xC7); /* FIFO on, cleared */
  outb(COM1 + 4, 0x03); /* DTR, RTS */
}

static void putc(char c) {
  while (!(inb(COM1 + 5) & 0x20)) {
  }
  outb(COM1, (u8)c);
}
static void puts(const char *s) {
  while (*s) putc(*s++);
}
static void putu(u32 v) {
  char buf[11];
  int i = 0;
  do {
    buf[i++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (i) putc(buf[--i]);
}
static void putx(u32 v) {
  puts("0x");
  for (int s = 28; s >= 0; s -= 4) putc("0123456789abcdef"[(v >> s) & 15]);
}
static void putkv(const char *k, u32 v) {
  putc(' ');
  puts(k);
  putc('=');
  putu(v);
}
static int serial_getc(void) { return (inb(COM1 + 5) & 1) ? inb(COM1) : -1; }

/* The compiler may emit calls to these for struct copies and loops. */
void *memset(void *d, int c, unsigned n) {
  u8 *p = d;
  while (n--) *p++ = (u8)c;
  return d;
}
void *memcpy(void *d, const void *s, unsigned n) {
  u8 *p = d;
  const u8 *q = s;
  while (n--) *p++ = *q++;
  return d;
}

/* ---- hashing and page contents (mirrored in adapters/qemu/testGuest.ts) ------------ */

static inline u32 mix32(u32 x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

static u32 seed = 1, image = 1, zero_pct = 25, shared_pct = 25, rate = 0;

static enum kind page_kind(u32 index) {
  u32 r = mix32(image ^ mix32(index ^ 0x9E3779B9u)) % 100;
  if (r < zero_pct) return KIND_ZERO;
  if (r < zero_pct + shared_pct) return KIND_SHARED;
  return KIND_UNIQUE;
}

static inline u32 *page_ptr(u32 index) { return (u32 *)(index << 12); }

static inline u32 fnv(u32 c, u32 w) { return (c ^ w) * FNV_PRIME; }

static void write_page(u32 index, u32 magic, u32 key, u32 version) {
  u32 *p = page_ptr(index);
  u32 x = mix32(magic ^ mix32(key ^ mix32(index ^ mix32(version ^ 0x2545F491u))));
  u32 c = fnv(fnv(fnv(FNV_BASIS, magic), index), version);
  for (u32 i = 4; i < PAGE_WORDS; i++) {
    x = x * 1664525u + 1013904223u;
    u32 w = x ^ (x >> 15);
    p[i] = w;
    c = fnv(c, w);
  }
  /* Header last: a half-rewritten page is caught by the checksum, not mistaken for new. */
  p[0] = magic;
  p[1] = index;
  p[2] = version;
  p[3] = c;
}

static int check_page(u32 index, enum kind k) {
  const u32 *p = page_ptr(index);
  if (k == KIND_ZERO) {
    u32 any = 0;
    for (u32 i = 0; i < PAGE_WORDS; i++) any |= p[i];
    return any == 0;
  }
  u32 magic = k == KIND_SHARED ? MAGIC_SHARED : MAGIC_UNIQUE;
  if (p[0] != magic || p[1] != index || (k == KIND_SHARED && p[2] != 0)) return 0;
  u32 c = fnv(fnv(fnv(FNV_BASIS, p[0]), p[1]), p[2]);
  for (u32 i = 4; i < PAGE_WORDS; i++) c = fnv(c, p[i]);
  return c == p[3];
}

/* ---- memory map -------------------------------------------------------------------- */

struct region {
  u32 first, end; /* page indexes, end exclusive */
};
static struct region regions[MAX_REGIONS];
static u32 nregions, managed_pages;

struct mb_info {
  u32 flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
  u32 syms[4];
  u32 mmap_length, mmap_addr;
};
struct __attribute__((packed)) mb_mmap {
  u32 size;
  u64 addr, len;
  u32 type;
};

static void add_region(u64 base, u64 len) {
  u64 lo = (base + 4095) >> 12, hi = (base + len) >> 12;
  if (lo < FIRST_PAGE) lo = FIRST_PAGE;
  if (hi > (1ull << 20)) hi = 1ull << 20; /* no paging: stop at 4 GiB */
  if (hi <= lo || nregions == MAX_REGIONS) return;
  regions[nregions].first = (u32)lo;
  regions[nregions].end = (u32)hi;
  nregions++;
  managed_pages += (u32)(hi - lo);
}

static void read_memory_map(const struct mb_info *mbi) {
  if (mbi->flags & (1u << 6)) {
    u32 at = mbi->mmap_addr, end = mbi->mmap_addr + mbi->mmap_length;
    while (at < end) {
      const struct mb_mmap *e = (const struct mb_mmap *)at;
      if (e->type == 1) add_region(e->addr, e->len);
      at += e->size + 4;
    }
  } else if (mbi->flags & 1u) {
    add_region(1u << 20, (u64)mbi->mem_upper << 10);
  }
}

/* ---- command line ------------------------------------------------------------------ */

static char cmdline[1024];

static int word_is(const char *w, const char *key, const char **value) {
  while (*key && *w == *key) w++, key++;
  if (*key || *w != '=') return 0;
  *value = w + 1;
  return 1;
}

static u32 parse_u32(const char *s) {
  u32 v = 0, base = 10;
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) base = 16, s += 2;
  for (;; s++) {
    u32 d;
    if (*s >= '0' && *s <= '9') d = (u32)(*s - '0');
    else if (base == 16 && *s >= 'a' && *s <= 'f') d = (u32)(*s - 'a' + 10);
    else if (base == 16 && *s >= 'A' && *s <= 'F') d = (u32)(*s - 'A' + 10);
    else break;
    v = v * base + d;
  }
  return v;
}

static void parse_cmdline(const struct mb_info *mbi) {
  if (mbi->flags & (1u << 2)) {
    const char *src = (const char *)mbi->cmdline;
    u32 i = 0;
    while (src[i] && i < sizeof cmdline - 1) cmdline[i] = src[i], i++;
    cmdline[i] = 0;
  }
  char *w = cmdline;
  for (;;) {
    while (*w == ' ') w++;
    if (!*w) break;
    char *e = w;
    while (*e && *e != ' ') e++;
    char saved = *e;
    *e = 0;
    const char *v;
    if (word_is(w, "seed", &v)) seed = parse_u32(v);
    else if (word_is(w, "image", &v)) image = parse_u32(v);
    else if (word_is(w, "zero", &v)) zero_pct = parse_u32(v);
    else if (word_is(w, "shared", &v) || word_is(w, "dup", &v)) shared_pct = parse_u32(v);
    else if (word_is(w, "rate", &v)) rate = parse_u32(v);
    *e = saved;
    w = e;
  }
  if (zero_pct > 100) zero_pct = 100;
  if (shared_pct > 100 - zero_pct) shared_pct = 100 - zero_pct;
}

/* ---- interrupts: flat IDT, PIC remapped to 32..47, PIT at ~1 kHz -------------------- */

struct __attribute__((packed)) idt_gate {
  u16 off_lo, sel;
  u8 zero, type;
  u16 off_hi;
};
struct __attribute__((packed)) idt_ptr {
  u16 limit;
  u32 base;
};
struct frame {
  u32 edi, esi, ebp, esp, ebx, edx, ecx, eax, vector, error, eip, cs, eflags;
};

extern const u32 isr_table[48];
static struct idt_gate idt[48];
static volatile u32 ticks;

void isr_dispatch(struct frame *f);
void isr_dispatch(struct frame *f) {
  if (f->vector >= 32) {
    if (f->vector == 32) ticks++;
    if (f->vector >= 40) outb(0xA0, 0x20);
    outb(0x20, 0x20);
    return;
  }
  puts("\nPANIC exception=");
  putu(f->vector);
  puts(" error=");
  putx(f->error);
  puts(" eip=");
  putx(f->eip);
  puts("\n");
  for (;;) __asm__ volatile("cli; hlt");
}

static void interrupts_init(void) {
  for (u32 i = 0; i < 48; i++) {
    idt[i].off_lo = (u16)(isr_table[i] & 0xFFFF);
    idt[i].off_hi = (u16)(isr_table[i] >> 16);
    idt[i].sel = 0x08;
    idt[i].zero = 0;
    idt[i].type = 0x8E; /* present, ring 0, 32-bit interrupt gate */
  }
  struct idt_ptr p = {sizeof idt - 1, (u32)idt};
  __asm__ volatile("lidt %0" : : "m"(p));
  /* PIC: ICW1..4, vectors 32..47, then mask everything but IRQ0. */
  outb(0x20, 0x11);
  outb(0xA0, 0x11);
  outb(0x21, 0x20);
  outb(0xA1, 0x28);
  outb(0x21, 0x04);
  outb(0xA1, 0x02);
  outb(0x21, 0x01);
  outb(0xA1, 0x01);
  outb(0x21, 0xFE);
  outb(0xA1, 0xFF);
  /* PIT channel 0, rate generator (mode 2). */
  u32 div = (PIT_HZ + TICK_HZ / 2) / TICK_HZ;
  outb(0x43, 0x34);
  outb(0x40, (u8)(div & 0xFF));
  outb(0x40, (u8)(div >> 8));
}

/* ---- the guest --------------------------------------------------------------------- */

static u32 rng_state;
static u32 rng(void) { /* xorshift32 */
  u32 x = rng_state;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return rng_state = x;
}

/* n-th managed page (0 <= n < managed_pages) -> page index */
static u32 nth_page(u32 n) {
  for (u32 r = 0; r < nregions; r++) {
    u32 len = regions[r].end - regions[r].first;
    if (n < len) return regions[r].first + n;
    n -= len;
  }
  return 0;
}

static u32 counts[3];

static void fill(void) {
  for (u32 r = 0; r < nregions; r++) {
    for (u32 i = regions[r].first; i < regions[r].end; i++) {
      enum kind k = page_kind(i);
      counts[k]++;
      if (k == KIND_SHARED) write_page(i, MAGIC_SHARED, image, 0);
      else if (k == KIND_UNIQUE) write_page(i, MAGIC_UNIQUE, seed, 0);
      else if (!check_page(i, KIND_ZERO)) memset(page_ptr(i), 0, 4096); /* firmware leftovers */
    }
  }
}

static void verify(void) {
  u32 bad = 0, first = 0;
  for (u32 r = 0; r < nregions; r++) {
    for (u32 i = regions[r].first; i < regions[r].end; i++) {
      if (!check_page(i, page_kind(i))) {
        if (!bad) first = i;
        bad++;
      }
    }
  }
  if (bad) {
    puts("VERIFY FAIL ");
    putu(bad);
    putkv("first", first);
  } else {
    puts("VERIFY OK");
    putkv("pages", managed_pages);
  }
  puts("\n");
}

static u32 dirtied;

/* Rewrite one random unique page with its next version; gives up after a few misses
 * (a mix with few unique pages simply dirties less). */
static void dirty_one(void) {
  for (int tries = 0; tries < 64; tries++) {
    u32 i = nth_page(rng() % managed_pages);
    if (page_kind(i) != KIND_UNIQUE) continue;
    write_page(i, MAGIC_UNIQUE, seed, page_ptr(i)[2] + 1);
    dirtied++;
    return;
  }
}

void kmain(u32 magic, const struct mb_info *mbi);
void kmain(u32 magic, const struct mb_info *mbi) {
  serial_init();
  if (magic != 0x2BADB002u) {
    puts("PANIC not booted by a multiboot loader\n");
    return;
  }
  parse_cmdline(mbi);
  read_memory_map(mbi);
  puts("gangway-guest");
  putkv("seed", seed);
  putkv("image", image);
  putkv("zero", zero_pct);
  putkv("shared", shared_pct);
  putkv("rate", rate);
  putkv("regions", nregions);
  puts("\n");
  if (!managed_pages) {
    puts("PANIC no usable memory above 2 MiB\n");
    return;
  }
  fill();
  rng_state = mix32(seed ^ 0x6A09E667u) | 1;
  puts("READY");
  putkv("pages", managed_pages);
  putkv("zero", counts[KIND_ZERO]);
  putkv("shared", counts[KIND_SHARED]);
  putkv("unique", counts[KIND_UNIQUE]);
  putkv("first", regions[0].first);
  puts("\n");

  interrupts_init();
  __asm__ volatile("sti");
  int paused = 0;
  u32 seen = ticks;
  u64 credit = 0;
  for (;;) {
    int c;
    while ((c = serial_getc()) >= 0) {
      if (c == 'v') verify();
      else if (c == 'p') paused = 1, puts("PAUSED\n");
      else if (c == 'r') paused = 0, puts("RESUMED\n");
      else if (c == 's') {
        puts("STATUS");
        putkv("dirtied", dirtied);
        putkv("paused", (u32)paused);
        putkv("ticks", ticks);
        puts("\n");
      }
    }
    u32 now = ticks, elapsed = now - seen;
    seen = now;
    if (!paused && rate) {
      /* credit counts page-thousandths; cap it at 0.1 s of work so a long verify or a
       * pause in migration does not turn into a burst. */
      u64 add = (u64)elapsed * rate;
      u64 cap = (u64)rate * (TICK_HZ / 10) + TICK_HZ;
      credit = credit + add > cap ? cap : credit + add;
      while (credit >= TICK_HZ) {
        credit -= TICK_HZ;
        dirty_one();
      }
    }
    __asm__ volatile("hlt"); /* next timer tick */
  }
}
