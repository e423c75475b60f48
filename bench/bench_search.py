"""Search latency on PostgreSQL: N subjects × 22 muscle-sides × 3 metrics (default N = 100 000).

Creates a throwaway database on the test server, bulk-loads synthetic rows with COPY, runs
typical queries through ``repository.services.search.search`` (facets + heat map included)
as an anonymous visitor and as the project owner, prints p50/p95 per query, drops the database.

    .venv/bin/python bench/bench_search.py [--subjects 100000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
import uuid

import numpy as np
import psycopg
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from repository import migrate
from repository.db import make_engine
from repository.models import Membership, Project, Role, Subject, User
from repository.services import search, search_index
from repository.services.consent_filters import shareable_subject_clause
from repository.services.context import ANONYMOUS, Actor

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
METRICS = (("ff_mean", "%"), ("t2w_mean", "ms"), ("volume_ml", "ml"))


def _copy(conn: psycopg.Connection, table: str, columns: str, rows: io.StringIO) -> None:
    rows.seek(0)
    with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        while chunk := rows.read(1 << 20):
            copy.write(chunk)


def generate(url: str, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    raw = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(raw) as conn:
        conn.execute(
            "INSERT INTO users (id, email, name, institution, password_hash, is_admin, is_active, is_verified, created_at)"
            " VALUES (1, 'owner@x.org', 'Owner', '', 'x', false, true, true, now())"
        )
        conn.execute(
            "INSERT INTO projects (id, slug, title, description, diseases, licence, data_use_conditions, is_public, created_at)"
            " VALUES (1, 'big', 'Big cohort', 'Facioscapulohumeral dystrophy thigh MRI', '[]', '', '[]', true, now())"
        )
        conn.execute(
            "INSERT INTO memberships (user_id, project_id, role, created_at) VALUES (1, 1, 'owner', now())"
        )
        diseases = np.array(["FSHD", "LGMD", "DM1", "IBM", "Pompe"])
        dis = diseases[rng.integers(0, 5, n)]
        sex = np.where(rng.random(n) < 0.5, "F", "M")
        buf = io.StringIO()
        for i in range(n):
            buf.write(f"{i + 1}\t1\ts{i:06d}\t{sex[i]}\t{dis[i]}\t2026-01-01\n")
        _copy(conn, "subjects", "id, project_id, pseudonym, sex, disease, created_at", buf)
        buf = io.StringIO()
        for i in range(n):
            buf.write(f"{i + 1}\t{i + 1}\t1\tmain\t1\t2025-01-01\t[]\tconsent\tf\t2026-01-01\n")
        _copy(
            conn,
            "consents",
            "id, subject_id, version, form, form_version, signed_on, duo_terms, lawful_basis, recontact_allowed, created_at",
            buf,
        )
        ages = np.round(18 + 60 * rng.random(n), 1)
        buf = io.StringIO()
        for i in range(n):
            buf.write(f"{i + 1}\t{i + 1}\t01\t\t{ages[i]}\t0\t2026-01-01\n")
        _copy(
            conn,
            "visits",
            "id, subject_id, label, study_uid, age_at_scan_years, day_offset, created_at",
            buf,
        )
        vendors = np.array(["Siemens", "Philips", "GE"])
        ven = vendors[rng.integers(0, 3, n)]
        fs = np.where(rng.random(n) < 0.7, "3", "1.5")
        buf = io.StringIO()
        for i in range(n):
            for j, contrast in enumerate(("MESE", "DIXON")):
                buf.write(
                    f"{2 * i + j + 1}\t{i + 1}\t1.2.{i}.{j}\t{contrast}\t{ven[i]}\t\t{fs[i]}\tthigh\t{{}}\t\t2026-01-01\n"
                )
        _copy(
            conn,
            "series",
            "id, visit_id, series_uid, contrast, vendor, model, field_strength_t, anatomy, parameters, mids_path, created_at",
            buf,
        )
        # Load muscle_metrics without its indexes, then rebuild them (much faster than
        # maintaining four B-trees row by row).
        index_defs = [
            row[0]
            for row in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'muscle_metrics'"
                " AND indexname NOT LIKE 'pk_%'"
            )
        ]
        for (index_name,) in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'muscle_metrics'"
            " AND indexname NOT LIKE 'pk_%'"
        ).fetchall():
            conn.execute(f'DROP INDEX "{index_name}"')
        # Metrics are generated inside PostgreSQL (seeded), in subject-major order as the
        # pipeline writes them: FF rises with a per-subject severity and the muscle index,
        # water T2 follows FF, volumes are independent.
        conn.execute("SELECT setseed(0.42)")
        conn.execute(
            "CREATE TEMP TABLE severity AS SELECT id AS subject_id, random() AS s FROM subjects"
        )
        muscles = ", ".join(f"({i}, '{m}')" for i, m in enumerate(search.MUSCLES))
        conn.execute(
            f"""
            INSERT INTO muscle_metrics
                (subject_id, visit_id, muscle, side, metric, value, unit, model_version)
            SELECT b.subject_id, b.subject_id, b.muscle, b.side, x.metric,
                   round(x.value::numeric, 2), x.unit, ''
            FROM (
                SELECT v.subject_id, m.muscle, sd.side,
                       LEAST(95, GREATEST(0, v.s * (0.4 + 0.1 * m.idx) * 60
                                             + (random() - 0.5) * 12)) AS ff
                FROM severity v
                CROSS JOIN (VALUES {muscles}) AS m(idx, muscle)
                CROSS JOIN (VALUES ('L'), ('R')) AS sd(side)
            ) AS b
            CROSS JOIN LATERAL (VALUES
                ('ff_mean', b.ff, '%'),
                ('t2w_mean', 32 + 0.2 * b.ff + (random() - 0.5) * 4, 'ms'),
                ('volume_ml', abs(80 + (random() - 0.5) * 100), 'ml')
            ) AS x(metric, value, unit)
            ORDER BY b.subject_id, b.muscle, b.side
            """  # noqa: S608  (fixed vocabulary, no user input)
        )
        for index_def in index_defs:
            conn.execute(index_def)
        for table in (
            "subjects",
            "consents",
            "visits",
            "series",
            "muscle_metrics",
            "users",
            "projects",
            "memberships",
        ):
            sql = f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"  # noqa: S608  (fixed table names)
            conn.execute(sql)
        conn.commit()
    # The search index (search_subjects, search_profiles, search_visit_ff) is normally kept
    # current by the session hooks; a COPY bypasses them, so rebuild it as after a restore.
    engine = make_engine(url)
    t0 = time.perf_counter()
    with Session(engine) as session:
        n_indexed = search_index.rebuild(session)
        session.commit()
    print(f"search index rebuilt for {n_indexed} subjects in {time.perf_counter() - t0:.1f} s")
    engine.dispose()
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


QUERIES = {
    "everything (facets + heat map)": {},
    "FSHD, female, age 30-50": {
        "disease": ["FSHD"],
        "sex": ["F"],
        "age_min": "30",
        "age_max": "50",
    },
    "SM FF>30 AND RF FF<10 (issue example)": {
        "disease": ["FSHD"],
        "mc": ["semimembranosus:any:ff_mean:30:", "rectus_femoris:any:ff_mean::10"],
    },
    "3 T Siemens, MESE+DIXON, VL T2>40 ms": {
        "vendor": ["Siemens"],
        "field_strength": ["3"],
        "sequence": ["MESE", "DIXON"],
        "mc": ["vastus_lateralis:L:t2w_mean:40:"],
    },
    "OR of two muscle conditions": {
        "mc": ["gracilis:R:ff_mean:50:", "sartorius:L:volume_ml::40"],
        "combine": "or",
    },
    "full text 'dystrophy' + FSHD": {"q": "dystrophy", "disease": ["FSHD"]},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--keep", action="store_true", help="keep the database (prints its name)")
    parser.add_argument("--reuse", default="", help="run the queries on a kept database")
    args = parser.parse_args()
    admin = make_engine(ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    name = args.reuse or f"myovault_bench_{uuid.uuid4().hex[:8]}"
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    if not args.reuse:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        engine = make_engine(url)
        if not args.reuse:
            migrate.upgrade(engine)
            t0 = time.perf_counter()
            generate(url, args.subjects)
            print(
                f"generated {args.subjects} subjects, {args.subjects * 22 * 3} metric rows"
                f" in {time.perf_counter() - t0:.1f} s (database {name})"
            )
        from sqlalchemy.orm import sessionmaker

        session = sessionmaker(engine)()
        owner = Actor(user=session.scalar(select(User).where(User.id == 1)))
        assert session.scalar(select(Membership.role).where(Membership.user_id == 1)) == Role.OWNER  # noqa: S101
        assert session.get(Project, 1) is not None  # noqa: S101
        print(f"load average before the queries: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        # Baseline: the consent clause alone (every search must apply it; owned by consent/).
        base = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            session.scalar(select(func.count(Subject.id)).where(shareable_subject_clause()))
            base.append((time.perf_counter() - t) * 1000)
            session.rollback()
        base.sort()
        base_p50 = statistics.median(base)
        print(f"baseline: count of shareable subjects (consent clause only): p50 {base_p50:.0f} ms")
        print(
            f"{'query':42s} {'actor':10s} {'total':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'p50/base':>8s}"
        )
        for label, params in QUERIES.items():
            query = search.parse_query(params)
            for who, actor in (("anonymous", ANONYMOUS), ("owner", owner)):
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    result = search.search(session, actor, query)
                    times.append((time.perf_counter() - t) * 1000)
                    session.rollback()
                times.sort()
                p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
                print(
                    f"{label:42s} {who:10s} {result.total!s:>8s} {statistics.median(times):8.0f}"
                    f" {p95:8.0f} {statistics.median(times) / base_p50:8.1f}"
                )
            # the count-only path (no facets, no heat map), as used for quick refinement
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                search.search(session, ANONYMOUS, query, with_facets=False)
                times.append((time.perf_counter() - t) * 1000)
                session.rollback()
            times.sort()
            p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
            print(
                f"{'  counts only':42s} {'anonymous':10s} {'':>8s} {statistics.median(times):8.0f}"
                f" {p95:8.0f} {statistics.median(times) / base_p50:8.1f}"
            )
        print(f"load average after the queries: {os.getloadavg()[0]:.1f}")
        session.close()
        engine.dispose()
    finally:
        if not (args.keep or args.reuse):
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
