/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  Every livekpi.* configuration parameter (SPEC section 6): names,
 *	  defaults, contexts and limits.  Nothing else reads postgresql.conf.
 *	  Also the ProcessUtility hook that turns SET of a livekpi setting
 *	  that cannot be SET into an error saying how to change it.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/guc.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "pgtime.h"
#include "tcop/utility.h"
#include "utils/guc.h"
#include "utils/guc_tables.h"

#include "livekpi.h"

static ProcessUtility_hook_type prev_process_utility = NULL;

static void livekpi_process_utility(PlannedStmt *pstmt, const char *queryString,
									bool readOnlyTree, ProcessUtilityContext context,
									ParamListInfo params, QueryEnvironment *queryEnv,
									DestReceiver *dest, QueryCompletion *qc);

char	   *livekpi_database = NULL;
int			livekpi_flush_interval = 500;
int			livekpi_max_batch_changes = 100000;
int			livekpi_decoding_work_mem = 262144;
int			livekpi_delta_retention = 900;
int			livekpi_delta_retention_batches = 100000;
int			livekpi_max_lag = 30;
int			livekpi_max_stay_nights = 1000;
char	   *livekpi_timezone = NULL;
char	   *livekpi_listen_addresses = NULL;
int			livekpi_port = 8089;
int			livekpi_max_clients = 10000;
int			livekpi_client_buffer_limit = 1024;
int			livekpi_heartbeat_interval = 15;
char	   *livekpi_ssl_cert_file = NULL;
char	   *livekpi_ssl_key_file = NULL;
char	   *livekpi_allowed_origins = NULL;
char	   *livekpi_currency = NULL;
char	   *livekpi_test_fail_on_amount = NULL;

/*
 * check_timezone_name
 *		Refuse a livekpi.timezone that PostgreSQL does not know, at SET time
 *		rather than in the middle of a user's INSERT.
 */
static bool
check_timezone_name(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0')
	{
		GUC_check_errdetail("livekpi.timezone must not be empty.");
		return false;
	}
	if (pg_tzset(*newval) == NULL)
	{
		GUC_check_errdetail("Time zone \"%s\" is not recognized.", *newval);
		return false;
	}
	return true;
}

static bool
check_currency(char **newval, void **extra, GucSource source)
{
	const char *c = *newval;

	if (c == NULL || strlen(c) != 3 ||
		!(c[0] >= 'A' && c[0] <= 'Z') || !(c[1] >= 'A' && c[1] <= 'Z') ||
		!(c[2] >= 'A' && c[2] <= 'Z'))
	{
		GUC_check_errdetail("livekpi.currency must be an ISO 4217 code of three capital letters, such as USD.");
		return false;
	}
	return true;
}

void
livekpi_define_gucs(void)
{
	DefineCustomStringVariable("livekpi.database",
							   gettext_noop("Database whose tables livekpi tracks."),
							   NULL,
							   &livekpi_database,
							   "postgres",
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("livekpi.flush_interval",
							gettext_noop("Minimum time between the starts of two apply batches."),
							gettext_noop("The first change after a quiet period is applied at once; 0 applies changes as soon as they commit."),
							&livekpi_flush_interval,
							500, 0, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("livekpi.max_batch_changes",
							gettext_noop("Changes applied in one batch (a source transaction is never split)."),
							NULL,
							&livekpi_max_batch_changes,
							100000, 1, 10000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("livekpi.decoding_work_mem",
							gettext_noop("Memory the apply worker's decoder uses before it spills a large transaction to disk."),
							gettext_noop("The apply worker's logical_decoding_work_mem: a bulk load decodes several times faster when it fits."),
							&livekpi_decoding_work_mem,
							262144, 64, INT_MAX / 1024,
							PGC_SIGHUP, GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("livekpi.delta_retention",
							gettext_noop("How long livekpi.delta_log keeps batches for resume."),
							NULL,
							&livekpi_delta_retention,
							900, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("livekpi.delta_retention_batches",
							gettext_noop("Most batches livekpi.delta_log keeps."),
							NULL,
							&livekpi_delta_retention_batches,
							100000, 1, INT_MAX,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("livekpi.max_lag",
							gettext_noop("Apply lag past which /healthz answers 503."),
							NULL,
							&livekpi_max_lag,
							30, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("livekpi.max_stay_nights",
							gettext_noop("Bookings with more nights are skipped."),
							gettext_noop("Takes effect for tracked tables through livekpi.rebuild()."),
							&livekpi_max_stay_nights,
							1000, 1, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("livekpi.timezone",
							   gettext_noop("Time zone that turns timestamptz columns into dates."),
							   gettext_noop("Takes effect for tracked tables through livekpi.rebuild()."),
							   &livekpi_timezone,
							   "UTC",
							   PGC_SIGHUP, 0,
							   check_timezone_name, NULL, NULL);

	DefineCustomStringVariable("livekpi.listen_addresses",
							   gettext_noop("Addresses the HTTP/WebSocket listener binds; empty: no listener."),
							   NULL,
							   &livekpi_listen_addresses,
							   "127.0.0.1",
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("livekpi.port",
							gettext_noop("TCP port of the HTTP/WebSocket listener."),
							NULL,
							&livekpi_port,
							8089, 1, 65535,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("livekpi.max_clients",
							gettext_noop("Open WebSocket connections beyond this are refused with close code 1013."),
							NULL,
							&livekpi_max_clients,
							10000, 1, 1000000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("livekpi.client_buffer_limit",
							gettext_noop("Pending delta bytes per client before it gets a resync instead."),
							NULL,
							&livekpi_client_buffer_limit,
							1024, 16, INT_MAX / 1024,
							PGC_SIGHUP, GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("livekpi.heartbeat_interval",
							gettext_noop("Period of WebSocket heartbeat messages."),
							NULL,
							&livekpi_heartbeat_interval,
							15, 1, 3600,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomStringVariable("livekpi.ssl_cert_file",
							   gettext_noop("TLS certificate of the listener; with ssl_key_file the listener speaks TLS only."),
							   NULL,
							   &livekpi_ssl_cert_file,
							   "",
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("livekpi.ssl_key_file",
							   gettext_noop("TLS private key of the listener."),
							   NULL,
							   &livekpi_ssl_key_file,
							   "",
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("livekpi.allowed_origins",
							   gettext_noop("Comma-separated browser origins allowed to open WebSockets; empty: the listener's own; *: any."),
							   NULL,
							   &livekpi_allowed_origins,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("livekpi.currency",
							   gettext_noop("ISO 4217 code the dashboard formats money with."),
							   NULL,
							   &livekpi_currency,
							   "USD",
							   PGC_SIGHUP, 0,
							   check_currency, NULL, NULL);

	/*
	 * For tests only: the apply of a change with this exact amount raises a
	 * data error (SQLSTATE 22003), so that the careful mode can be tested
	 * with a fault only one change triggers.
	 */
	DefineCustomStringVariable("livekpi.test_fail_on_amount",
							   gettext_noop("Test only: applying a change with this amount fails with a data error."),
							   NULL,
							   &livekpi_test_fail_on_amount,
							   "",
							   PGC_SUSET, GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);

	MarkGUCPrefixReserved("livekpi");

	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = livekpi_process_utility;
}

/*
 * livekpi_process_utility
 *		PostgreSQL answers SET of a sighup or postmaster setting with
 *		"parameter cannot be changed now" and nothing more; every livekpi
 *		setting is one of those, and users reach for SET first (issue 11).
 *		Say how to change it instead, before PostgreSQL refuses.
 */
static void
livekpi_process_utility(PlannedStmt *pstmt, const char *queryString,
						bool readOnlyTree, ProcessUtilityContext context,
						ParamListInfo params, QueryEnvironment *queryEnv,
						DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (IsA(parsetree, VariableSetStmt))
	{
		VariableSetStmt *stmt = (VariableSetStmt *) parsetree;

		if (stmt->name != NULL && strncmp(stmt->name, "livekpi.", 8) == 0 &&
			(stmt->kind == VAR_SET_VALUE || stmt->kind == VAR_SET_DEFAULT ||
			 stmt->kind == VAR_RESET))
		{
			struct config_generic **vars = get_guc_variables();
			struct config_generic *gconf = NULL;
			int			i;

			for (i = 0; i < GetNumConfigOptions(); i++)
				if (pg_strcasecmp(vars[i]->name, stmt->name) == 0)
					gconf = vars[i];

			if (gconf != NULL && (gconf->context == PGC_SIGHUP ||
								  gconf->context == PGC_POSTMASTER))
			{
				bool		restart = gconf->context == PGC_POSTMASTER;

				ereport(ERROR,
						(errcode(ERRCODE_CANT_CHANGE_RUNTIME_PARAM),
						 errmsg("parameter \"%s\" cannot be changed with SET", stmt->name),
						 errdetail("It is a server-wide setting: it is read from the server's configuration%s.",
								   restart ? " at server start" : " when it is reloaded"),
						 strcmp(stmt->name, "livekpi.timezone") == 0 ?
						 errhint("Give a table its own zone with the timezone argument of livekpi.track_bookings() or livekpi.track_expenses(), or with livekpi.set_timezone(table, zone); or change the default for tables tracked later with ALTER SYSTEM SET livekpi.timezone = '...' and SELECT pg_reload_conf().") :
						 restart ?
						 errhint("Use ALTER SYSTEM SET %s = ... (or postgresql.conf) and restart the server.", stmt->name) :
						 errhint("Use ALTER SYSTEM SET %s = ... (or postgresql.conf), then SELECT pg_reload_conf().", stmt->name)));
			}
		}
	}

	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context, params,
							 queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}
