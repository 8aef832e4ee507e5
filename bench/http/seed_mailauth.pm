# The seed's nginx perl auth handler (mailauth.pm), for the benchmark baseline: unchanged
# logic (two new database connections per request, md5_hex comparison, full-scan
# concatenation queries) except: the connection parameters come from the environment
# (BENCH_PGHOST / BENCH_PGPORT / BENCH_PGDB) and Net::Nslookup is replaced by a constant
# address (which only favours the seed: no DNS lookup per request). Its "OK on database
# error" bug is kept as is: this file only exists to be measured.
package seed_mailauth;
use nginx;
use DBI;
use Digest::MD5 qw(md5_hex);
$pg_user = "mail";
$pg_pass = "mailpw";
$dsn = "DBI:Pg:dbname=$ENV{BENCH_PGDB};host=$ENV{BENCH_PGHOST};port=$ENV{BENCH_PGPORT}";
our $auth_ok;
$protocol_ports->{'pop3'}=110;
$protocol_ports->{'imap'}=143;
$protocol_ports->{'smtp'}=25;
sub handler {
$r = shift;
$Passdbh=DBI->connect($dsn,"$pg_user","$pg_pass",{PrintError=>0});
if (!$Passdbh) {
$r->header_out("Auth-Status", "OK") ;
$r->header_out("Auth-Server", '0.0.0.0');
$r->header_out("Auth-Port", $protocol_ports->{$r->header_in("Auth-Protocol")});
$r->send_http_header("text/html");
return OK;
};
$Mapsdbh=DBI->connect($dsn,"$pg_user","$pg_pass",{PrintError=>0});
$auth_ok=0;
$mailbox = $r->header_in("Auth-User");
our $get_pass_from_db=$Passdbh->prepare("SELECT password FROM mail
INNER JOIN ldomain ON ( mail.ldomain_id = ldomain.id )
INNER JOIN mdomain ON ( mail.mdomain_id = mdomain.id )
WHERE mail.mailbox || '\@' || ldomain.domain || '.' || mdomain.domain = ? ");
$get_pass_from_db->execute($mailbox);
@row=$get_pass_from_db->fetchrow_array();
$passfromDB=$row[0];
$md5passFromConnect = md5_hex($r->header_in("Auth-Pass"));
if ( $passfromDB eq $md5passFromConnect ){
$auth_ok=1;
}
if ($auth_ok==1){
@domain = split('\@',$mailbox);
$get_server_from_maps = $Mapsdbh->prepare(
"SELECT storage1 FROM maps
INNER JOIN ldomain ON ( maps.ldomain_id = ldomain.id ) INNER JOIN mdomain ON ( maps.mdomain_id = mdomain.id ) WHERE ldomain.domain || '.' || mdomain.domain = ? "
);
$get_server_from_maps->execute($domain[1]);
@row=$get_server_from_maps->fetchrow_array();
$server_from_maps = '127.0.0.2';   # seed: nslookup(host => $row[0], type => "A")
$r->header_out("Auth-Status", "OK") ;
$r->header_out("Auth-Server", $server_from_maps);
$r->header_out("Auth-Port", $protocol_ports->{$r->header_in("Auth-Protocol")});
} else {
$r->header_out("Auth-Status", "Invalid login or password") ;
}
$r->send_http_header("text/html");
return OK;
}
1;
__END__
