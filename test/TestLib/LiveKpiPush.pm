
# Copyright (c) 2026, livekpi authors
#
# test/TestLib/LiveKpiPush.pm
#	  Helpers for the push worker's TAP tests (test/t/1*_push_*.pl): a node
#	  with the listener on a free port, WebSocket clients driven through
#	  test/ws_client.py (python3-websockets, independent of our C code),
#	  HTTP requests, tokens, and push_test_batch() (test/TestLib/
#	  push_fake_batch.sql), which plays the apply worker so that the stream
#	  can be tested with exact control over batches.
#
#	  A client is a handle: ws_send() writes a message, ws_expect() waits
#	  for the next message matching a type or a predicate (messages are
#	  consumed in order, so "the next delta" means the next one after the
#	  last matched message), ws_all() returns every message received.

package TestLib::LiveKpiPush;

use strict;
use warnings;

use Cwd qw(abs_path);
use Exporter qw(import);
use File::Basename qw(dirname);
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use Test::More;
use Time::HiRes qw(usleep time);

use TestLib::LiveKpi;

our @EXPORT = qw(
  push_node push_url http_get push_worker_pid make_token fake_batch
  ws_open ws_send ws_expect ws_expect_closed ws_all ws_quiet ws_close
  json_decode json_encode rows_equal_sql apply_stream
);

my $testdir = abs_path(dirname(__FILE__) . '/..');
my $json = JSON::PP->new->canonical(1)->allow_nonref(1);

sub json_decode { return $json->decode($_[0]); }
sub json_encode { return $json->encode($_[0]); }

#
# push_node(name, conf => "...", no_extension => 1)
#
# A started node whose push worker listens on 127.0.0.1 and a free port
# ($node->{livekpi_port}), with the extension created (key type bigint)
# and push_test_batch() installed.
#
sub push_node
{
	my ($name, %opt) = @_;
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $node = livekpi_node(
		$name,
		conf => "livekpi.listen_addresses = '127.0.0.1'\n"
		  . "livekpi.port = $port\n"
		  . "livekpi.heartbeat_interval = 1\n"
		  . ($opt{conf} // ''),
		no_start => $opt{no_start});
	$node->{livekpi_port} = $port;
	$node->{livekpi_scheme} = $opt{tls} ? 'https' : 'http';
	return $node if $opt{no_start};
	push_node_prepare($node) unless $opt{no_extension};
	return $node;
}

sub push_node_prepare
{
	my ($node) = @_;
	$node->safe_psql('postgres', 'CREATE EXTENSION livekpi');
	$node->safe_psql(
		'postgres', q{
DO $$ BEGIN
	IF to_regclass('livekpi.property_kpis') IS NULL THEN
		PERFORM livekpi._install_key_type('bigint');
	END IF;
END $$});
	open my $fh, '<', "$testdir/TestLib/push_fake_batch.sql" or die $!;
	local $/;
	my $sql = <$fh>;
	close $fh;
	$node->safe_psql('postgres', $sql);
	return;
}

sub push_url
{
	my ($node, $path) = @_;
	my $scheme = $node->{livekpi_scheme} eq 'https' ? 'wss' : 'ws';
	return "$scheme://127.0.0.1:$node->{livekpi_port}" . ($path // '/v1/stream');
}

# (status, body, headers) of a GET on the listener.
sub http_get
{
	my ($node, $path, %headers) = @_;
	my $http = HTTP::Tiny->new(timeout => 10, verify_SSL => 0);
	my $r = $http->get(
		"$node->{livekpi_scheme}://127.0.0.1:$node->{livekpi_port}$path",
		{ headers => \%headers });
	return ($r->{status}, $r->{content}, $r->{headers});
}

sub push_worker_pid
{
	my ($node) = @_;
	my $pid = try_query($node,
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'livekpi push worker'");
	return (defined $pid && $pid =~ /^(\d+)$/) ? $1 : undef;
}

# A new token; properties is an SQL array literal or undef.
sub make_token
{
	my ($node, $label, $properties, $valid_for) = @_;
	my $props = defined $properties ? "'$properties'" : 'NULL';
	$valid_for //= '30 days';
	return $node->safe_psql('postgres',
		"SELECT livekpi.create_token('$label', $props, '$valid_for')");
}

# One fake batch; returns its seq.
sub fake_batch
{
	my ($node, @args) = @_;
	return $node->safe_psql('postgres',
		'SELECT push_test_batch(' . join(', ', @args) . ')');
}

#
# ws_open(node, url => ..., args => [...], hello => {...})
#
sub ws_open
{
	my ($node, %opt) = @_;
	my $c = {
		in => '',
		out => '',
		err => '',
		msgs => [],
		cursor => 0,
		partial => '',
		name => $opt{name} // 'client'
	};
	my $url = $opt{url} // push_url($node);
	my @cmd = ('/usr/bin/python3', "$testdir/ws_client.py", $url,
		@{ $opt{args} // [] });
	$c->{h} = IPC::Run::start(\@cmd, '<', \$c->{in}, '>', \$c->{out},
		'2>', \$c->{err});
	bless $c, 'TestLib::LiveKpiPush::Client';
	my $first = ws_expect($c,
		sub { exists $_[0]->{_connected} || exists $_[0]->{_connect_error} },
		'connection', 15);
	$c->{connect_error} = $first ? $first->{_connect_error} : 'timeout';
	if (!$c->{connect_error} && $opt{hello})
	{
		ws_send($c, $opt{hello});
	}
	return $c;
}

sub _pump
{
	my ($c) = @_;
	eval { $c->{h}->pump_nb if $c->{h}->pumpable; 1 };
	my $data = ($c->{partial} // '') . ($c->{out} // '');
	$c->{out} = '';
	my @lines = split /\n/, $data, -1;
	$c->{partial} = pop @lines;
	for my $l (@lines)
	{
		next if $l eq '';
		my $m = eval { $json->decode($l) };
		$m = { _unparsable => $l } unless defined $m;
		push @{ $c->{msgs} }, $m;
	}
	return;
}

sub ws_send
{
	my ($c, $msg) = @_;
	$msg = $json->encode($msg) if ref $msg;
	$c->{in} .= "$msg\n";
	# IPC::Run writes only while pumped: push it all out now
	my $deadline = time() + 10;
	while (length($c->{in}) && time() < $deadline)
	{
		last unless eval { $c->{h}->pump_nb if $c->{h}->pumpable; 1 };
		last unless $c->{h}->pumpable;
		usleep(1000) if length($c->{in});
	}
	return;
}

#
# ws_expect(client, type-or-predicate, description, timeout)
#
# The next message (after the last one matched) of that type, or for which
# the predicate is true; undef after the timeout.  Messages skipped on the
# way stay in ws_all().
#
sub ws_expect
{
	my ($c, $want, $what, $timeout) = @_;
	$timeout //= 15;
	my $pred = ref $want eq 'CODE' ? $want : sub { ($_[0]->{type} // '') eq $want };
	my $deadline = time() + $timeout;
	while (1)
	{
		_pump($c);
		while ($c->{cursor} < @{ $c->{msgs} })
		{
			my $m = $c->{msgs}[ $c->{cursor}++ ];
			return $m if $pred->($m);
		}
		last if time() > $deadline;
		usleep(20_000);
	}
	diag("$c->{name}: timed out after ${timeout}s waiting for "
		  . ($what // (ref $want ? 'a message' : $want))
		  . "; received: "
		  . join("\n  ", map { substr($json->encode($_), 0, 300) } @{ $c->{msgs} }));
	return undef;
}

# The close: {"_closed": code, "reason": ...}, after an optional error.
sub ws_expect_closed
{
	my ($c, $timeout) = @_;
	return ws_expect($c, sub { exists $_[0]->{_closed} }, 'the close', $timeout);
}

sub ws_all
{
	my ($c) = @_;
	_pump($c);
	return @{ $c->{msgs} };
}

# Messages received since the last match, after waiting "seconds".
sub ws_quiet
{
	my ($c, $seconds) = @_;
	my $deadline = time() + $seconds;
	while (time() < $deadline) { _pump($c); usleep(20_000); }
	return @{ $c->{msgs} }[ $c->{cursor} .. $#{ $c->{msgs} } ];
}

sub ws_close
{
	my ($c) = @_;
	ws_send($c, '!close');
	eval { $c->{h}->finish; 1 } or eval { $c->{h}->kill_kill; 1 };
	return;
}

#
# apply_stream(state, message)
#
# Apply a snapshot or delta to a client-side state: {view => {keyjson => row}}.
#
my %KEYS = (
	property_kpis => [qw(property_id month)],
	portfolio_kpis => [qw(month)],
	expense_monthly => [qw(property_id month category)],
	booking_daily => [qw(property_id day)]);

sub _key
{
	my ($view, $row) = @_;
	return $json->encode([ map { $row->{$_} } @{ $KEYS{$view} } ]);
}

sub apply_stream
{
	my ($state, $m) = @_;
	if ($m->{type} eq 'snapshot')
	{
		%$state = ();
		for my $view (keys %{ $m->{rows} })
		{
			$state->{$view} = {};
			$state->{$view}{ _key($view, $_) } = $_ for @{ $m->{rows}{$view} };
		}
	}
	elsif ($m->{type} eq 'delta')
	{
		for my $view (keys %{ $m->{deletes} })
		{
			delete $state->{$view}{ _key($view, $_) } for @{ $m->{deletes}{$view} };
		}
		for my $view (keys %{ $m->{upserts} })
		{
			$state->{$view}{ _key($view, $_) } = $_ for @{ $m->{upserts}{$view} };
		}
	}
	return;
}

#
# rows_equal_sql(node, rows-arrayref, sql-of-rows)
#
# Whether a list of JSON rows equals the rows of an SQL query as to_jsonb,
# as sets, compared as jsonb (so 1.0 and 1.00 are equal, as in SQL).
#
sub rows_equal_sql
{
	my ($node, $rows, $sql) = @_;
	my $lit = $json->encode($rows);
	$lit =~ s/'/''/g;
	my $out = $node->safe_psql(
		'postgres', qq{
SELECT coalesce((SELECT jsonb_agg(x ORDER BY x::text) FROM jsonb_array_elements('$lit'::jsonb) x), '[]')
	 = coalesce((SELECT jsonb_agg(to_jsonb(r) ORDER BY to_jsonb(r)::text) FROM ($sql) r), '[]')});
	return 1 if $out eq 't';
	my $diff = $node->safe_psql(
		'postgres', qq{
WITH mine AS (SELECT x FROM jsonb_array_elements('$lit'::jsonb) x),
	 theirs AS (SELECT to_jsonb(r) AS x FROM ($sql) r)
SELECT 'client only: ' || x::text FROM (SELECT x FROM mine EXCEPT ALL SELECT x FROM theirs) a
UNION ALL
SELECT 'SQL only:    ' || x::text FROM (SELECT x FROM theirs EXCEPT ALL SELECT x FROM mine) b
LIMIT 10});
	diag("rows differ from $sql:\n$diff");
	return 0;
}

package TestLib::LiveKpiPush::Client;

sub DESTROY
{
	my ($c) = @_;
	eval { $c->{h}->kill_kill if $c->{h}; 1 };
	return;
}

1;
